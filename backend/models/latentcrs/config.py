"""LatentCRS settings: the intents, the two networks, variational EM (Algorithm 1) and the variants.

The paper gives no hyper-parameters (its Figure 3 sweeps K, λ, α^M and α^E without numbers); the
defaults here were chosen on the held-out view's valid split, the loss weights start from the
authors' released scripts (rec weight 5), and every value is saved beside the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from backend.registry import ModelConfig
from backend.settings import get_settings

VARIANTS = ("B", "F", "V")  # §5.1: base; + hard filter (§4.3); + LLM verification of the items
ENCODERS = ("smollm2", "minilm")  # the LLM's last-token state (the paper's) or the sentence encoder
# Table 5's ablations, plus "no_em" (Algorithm 1 stopped after the prior) and "no_filter" (F's
# extraction shown, its filter not applied).
ABLATIONS = ("none", "no_inference", "direct_kl", "no_recloss", "no_augment", "no_em")
SCORES = ("mixture", "logit")
RANKERS = (
    "intent",
    "popularity",
    "sasrec",
)  # Eq. 2's mixture of per-intent softmaxes, or Eq. 10's mixed logits
# Fields that change what is trained: they name the checkpoint; the rest are run-time choices.
TRAINING_FIELDS = (
    "text_encoder",
    "n_intents",
    "ffn_hidden",
    "dropout",
    "lam",
    "alpha_m",
    "alpha_e",
    "negatives",
    "lr",
    "batch_size",
    "warmup_epochs",
    "prior_epochs",
    "em_iterations",
    "epochs_per_step",
    "segments",
    "max_history",
    "empty_rate",
    "ablation",
    "score",  # it chooses the epoch kept
    "seed",
)


@dataclass
class LatentCRSConfig(ModelConfig):
    variant: str = "F"
    text_encoder: str = "minilm"
    n_intents: int = 64  # K (Eq. 3); the authors' ML-1M runs use 128-512 for 6k users
    ffn_hidden: int = 128  # the FFN of Eq. 5 (the authors' [128, 64])
    dropout: float = 0.2
    lam: float = 1.0  # λ of Eq. 11 (1 = the plain ELBO's KL term)
    alpha_m: float = 5.0  # α^M of Eq. 11, the generative model's recommendation loss
    alpha_e: float = 5.0  # α^E of Eq. 17, the inference model's recommendation loss
    negatives: int = 0  # n of Eq. 8; 0 = the whole catalog (1,682 films fit one softmax)
    # Chosen on the valid split's LLM-written descriptions, LatentCRS_B R@20: lr 1e-3 with 4 EM
    # iterations 0.317, 16 iterations 0.345; lr 3e-3 with 16 iterations 0.354, 32 iterations 0.364.
    lr: float = 3e-3
    batch_size: int = 256
    warmup_epochs: int = 20  # Algorithm 1 line 1: the inference model alone (Eq. 16)
    prior_epochs: int = 20  # line 2: the generative model with q fixed (Eq. 11)
    em_iterations: int = 32  # lines 3-9: E-step then M-step
    epochs_per_step: int = 5  # epochs of each E-step and each M-step
    segments: int = 5  # augmentation: random segments of each user's sequence (§5.1)
    max_history: int = 25  # items of a sequence the recommender reads (the authors' 25)
    empty_rate: float = 0.1  # share of instances with no history, so a new demo user is served
    ablation: str = "none"
    # Ranking by Eq. 10's h, the scores L_rec^M trains; on valid it beat Eq. 2's mixture
    # (R@20 0.433 against 0.358 with K=64).
    score: str = "logit"
    # What ranks the films: the intents (LatentCRS), or, as the study's controls for the hard
    # filter, the films' popularity or the SASRec it reads alone.
    ranker: str = "intent"
    use_history: bool = True  # False: S of an empty sequence, the study's "text alone" row
    # Hard filter (§4.3): who extracts the strict constraints, and the fewest films it may leave.
    extract: str = "llm"
    min_kept: int = 5
    rerank: int = 10  # variant V: the LLM checks this many of the filtered top items
    device: str = "auto"
    checkpoint: str = ""  # directory; empty = CRS_HOME/checkpoints/latentcrs/<dataset>/<run>
    trained_on: str = "movielens-100k-heldout"  # the view it learns from (no test target in it)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("variant", self.variant, VARIANTS),
            ("text_encoder", self.text_encoder, ENCODERS),
            ("ablation", self.ablation, ABLATIONS),
            ("score", self.score, SCORES),
            ("extract", self.extract, ("llm", "rules")),
            ("ranker", self.ranker, RANKERS),
        ):
            if value not in allowed:
                raise ValueError(f"latentcrs: {name} must be one of {', '.join(allowed)}")
        if self.n_intents < 2:
            raise ValueError("latentcrs: n_intents must be at least 2")

    def training(self) -> dict[str, object]:
        """The fields that decide the trained weights (saved, and compared on resume)."""
        values = asdict(self)
        return {k: values[k] for k in TRAINING_FIELDS}

    def run_name(self) -> str:
        """The checkpoint folder's name: encoder, K, and what departs from the defaults."""
        default = LatentCRSConfig().training()
        changed = [
            f"{k}={v}"
            for k, v in self.training().items()
            if v != default[k] and k not in ("text_encoder", "n_intents", "ablation")
        ]
        parts = [self.text_encoder, f"k{self.n_intents}"]
        parts += [self.ablation] if self.ablation != "none" else []
        return "-".join(parts + changed)

    def checkpoint_dir(self) -> Path:
        if self.checkpoint:
            return Path(self.checkpoint).expanduser()
        return get_settings().checkpoints / "latentcrs" / self.trained_on / self.run_name()
