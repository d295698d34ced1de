"""PECRS (Ravaut et al., 2024): a parameter-efficient CRS that recommends and talks with one LM.

A decoder-only LM with LoRA reads the dialogue, in which every mentioned movie is one input
vector made from its text (§3.2, Eq. 1-2). The LM's state at a final [REC] token queries all
items (recall, Eq. 3-4); the top candidates are appended after the context, each seeing only
the context, and scored again (rerank, Eq. 5); the best item is appended as [REC] item [REC_END]
and the LM writes the response (Eq. 6-7). One loss trains all three (Eq. 8).

The package reads like the paper: `config` (settings, special tokens), `inputs` (§3.2), `model`
(the modules and the losses, Eq. 1-8), `trainer` (`crs train pecrs`) and `inference` (recall,
rerank and the reply, served as a `CRSModel`; `crs eval pecrs`).

Two choices the paper leaves open, made here:
- Item token states come from the frozen backbone (LoRA off), computed once and cached on disk;
  the paper also stops the LM's gradients for items (§3.3) but re-encodes them with the current
  LoRA weights every step, which on CPU would cost more than the rest of the step.
- Similarity is the cosine over a temperature: the paper's exp(angular distance) (Eq. 3) needs a
  scale to train, and ranking by angular distance, sqrt(2(1 - cos)), is ranking by cosine.
"""

from backend.models.pecrs.config import ITEM, REC, REC_END, SEP, SPECIAL_TOKENS, PECRSConfig
from backend.models.pecrs.inference import (
    PECRS,
    RecDecision,
    all_item_vectors,
    choose_rec_threshold,
    rank_items,
    rec_states,
)
from backend.models.pecrs.inputs import Inputs, Sample, epoch_order, slot
from backend.models.pecrs.model import (
    PECRSNet,
    build,
    build_batch,
    checkpoint_dir,
    default_checkpoint,
    pecrs_losses,
    sample_negatives,
    trainable_parameters,
    training_batch,
)
from backend.models.pecrs.trainer import TrainingRun, train_pecrs, train_step

__all__ = [
    "ITEM",
    "PECRS",
    "REC",
    "REC_END",
    "SEP",
    "SPECIAL_TOKENS",
    "Inputs",
    "PECRSConfig",
    "PECRSNet",
    "RecDecision",
    "Sample",
    "TrainingRun",
    "all_item_vectors",
    "build",
    "build_batch",
    "choose_rec_threshold",
    "checkpoint_dir",
    "default_checkpoint",
    "epoch_order",
    "pecrs_losses",
    "rank_items",
    "rec_states",
    "sample_negatives",
    "slot",
    "train_pecrs",
    "train_step",
    "trainable_parameters",
    "training_batch",
]
