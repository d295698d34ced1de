"""PECRS's settings and special tokens: the paper's values (§4.1), and each deviation as a setting."""

from __future__ import annotations

from dataclasses import dataclass

from backend.catalog import ITEM_FIELDS
from backend.registry import ModelConfig

ITEM, SEP, REC, REC_END = "[ITEM]", "[SEP]", "[REC]", "[REC_END]"
SPECIAL_TOKENS = (ITEM, SEP, REC, REC_END)
DECODINGS = ("greedy", "beam", "top-k", "nucleus")  # the strategies of Table 8


@dataclass
class PECRSConfig(ModelConfig):
    # Backbone: empty = CRS_LLM (the bundled SmolLM2-135M, GPT-2 small's size); any HF causal LM
    # folder works (GPT-2 medium, a 1B model on a GPU).
    backbone: str = ""
    device: str = ""  # empty = CRS_DEVICE
    checkpoint: str = ""  # folder; empty = CRS_HOME/checkpoints/pecrs/<trained_on or dataset>
    trained_on: str = ""  # dataset whose default checkpoint to load (the demo serves redial's)
    # Served on another catalog (with trained_on), its items lacking the fields the heads were
    # trained to read (MovieLens has no cast or plot) take them from the same film (title and
    # year) in the training catalog; false: the serving catalog's own text alone.
    fill_metadata: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # peft's usual 0.05 costs ~15% of a CPU step in dropout masks
    # Inputs (§4.1: context capped at 256 tokens, response at 64).
    context_tokens: int = 256
    response_tokens: int = 64
    item_tokens: int = 64  # item text cap; plots past it are cut
    title_only: bool = False  # Table 5 "w/o Metadata (just title)"
    # Item fields left empty, comma-separated (actors, directors, genres, plot; Table 6 prunes
    # them): training on the fields a serving catalog has (MovieLens: genres only) keeps the
    # heads from relying on fields it lacks.
    drop_fields: str = ""
    # Recommendation.
    m_train: int = 150  # negatives per training context (§4.1)
    # Recall loss against the whole catalog (issue 14: random negatives are easy, mostly obscure
    # films, so recall learned little more than popularity); paper: the m_train sampled ones.
    catalog_recall: bool = True
    m_infer: int = 700  # candidates retrieved for reranking at inference (§4.1)
    share_negatives: bool = True  # Table 5 "w/o Neg. sharing (batch)" when false
    temperature: float = 0.05  # cosine / temperature are the recall logits
    # Deviations that make short CPU runs learn (issue 14); the paper's value is the other one.
    item_bias: bool = (
        True  # a per-item recall bias started from log(1 + train mentions); paper: off
    )
    every_item: bool = True  # each movie of a response is a sample; paper: the first one only
    rec_fraction: float = 0.75  # share of recommending turns in an epoch; 0 = natural mix (paper)
    # Loss weights of Eq. 8; alpha=0 is "w/o Recall loss", beta=0 "w/o Rerank loss".
    alpha: float = 0.15
    beta: float = 0.85
    gamma: float = 1.0
    # Training (§4.1: AdamW, lr 3e-5, linear warm-up for 1 of 10 epochs, effective batch 8).
    epochs: int = 10
    max_steps: int = 0  # 0 = run all epochs
    batch_size: int = 4  # 4 x 2 micro-batches = the paper's effective 8, under 4 GB on CPU
    grad_accum: int = 2
    lr: float = 3e-5
    head_lr: float = 0.0  # 0 = lr; the randomly initialised heads learn faster on short CPU runs
    # Warm start (issue 14; paper: none): before LoRA, f and the item bias train on the frozen
    # LM's cached [REC] states against the whole catalog; the best of this many epochs on dev.
    warm_start_epochs: int = 30
    warm_start_lr: float = 1e-3
    # Keep f and the item bias as the warm start left them while LoRA trains, so LoRA must learn
    # [REC] states that suit them (issue 14: training them on with LoRA undid the warm start).
    freeze_warm_start: bool = False
    warmup_ratio: float = 0.1
    eval_every: int = 0  # optimizer steps between dev evaluations; 0 = once per epoch
    dev_samples: int = 200  # dev recommendation samples per evaluation (model selection)
    save_every: int = 20  # optimizer steps between resumable training states (0 = at evals only)
    # Recompute each layer's activations in backward instead of keeping them: a training step's
    # peak memory on CPU falls from about 10.5 GB to under 4 GB for some extra compute.
    gradient_checkpointing: bool = True
    # Recommend when p([REC] next) >= this; negative: when [REC] is the LM's most likely token.
    # Training sets it to the dev split's best item-presence F1 (saved with the checkpoint).
    rec_threshold: float = -1.0
    # Generation (§4.1: top-k sampling with k = 50; Table 8 compares the others).
    generate: bool = True  # false: rank only and answer with a template (fast evaluation)
    rerank: bool = True  # false: rank by the recall similarity alone (to measure each stage)
    decoding: str = "top-k"
    sample_top_k: int = 50
    sample_top_p: float = 0.9
    num_beams: int = 4
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise ValueError(f"pecrs: decoding must be one of {', '.join(DECODINGS)}")
        if self.drop_fields:
            unknown = set(self.dropped_fields) - set(ITEM_FIELDS)
            if unknown:
                raise ValueError(
                    f"pecrs: drop_fields {sorted(unknown)} unknown; choose from "
                    f"{', '.join(ITEM_FIELDS)}"
                )
        if self.m_train < 1 or self.m_infer < 1:
            raise ValueError("pecrs: m_train and m_infer must be >= 1")

    @property
    def dropped_fields(self) -> tuple[str, ...]:
        return tuple(f.strip() for f in self.drop_fields.split(",") if f.strip())
