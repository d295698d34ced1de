"""LLMCRS's sub-task schema (the paper's Table 1) and settings; each ablation of §6 is a setting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.registry import ModelConfig
from backend.settings import get_settings


@dataclass(frozen=True)
class SubTask:
    """One row of Table 1, plus the goal the matching prompt states (§3.2)."""

    key: str
    name: str
    arguments: str
    output: str
    goal: str


SUBTASKS = (
    SubTask(
        "elicit",
        "User Preference Elicitation",
        "{category, dialogue context}",
        "Text",
        "ask the user a question that narrows down which movie they want",
    ),
    SubTask(
        "recommend",
        "Recommendation",
        "{category, dialogue context}",
        "Item",
        "recommend movies that fit what the user asked for",
    ),
    SubTask(
        "explain",
        "Explanation",
        "{item name, dialogue context}",
        "Text",
        "explain why a recommended movie fits the user",
    ),
    SubTask(
        "detail",
        "Item Detail Search",
        "{item name, item attribute}",
        "Text",
        "look up a fact about a movie (its year, genres, cast, director or plot)",
    ),
)
SUBTASK = {s.key: s for s in SUBTASKS}
CHOICES = ("auto", "score", "json")


@dataclass
class LLMCRSConfig(ModelConfig):
    llm: str = ""  # empty = CRS_LLM (the bundled SmolLM2-135M-Instruct)
    base_url: str = ""  # an OpenAI-compatible endpoint; empty = CRS_LLM_BASE_URL or local
    device: str = "auto"  # for the local LLM
    # The detection warm start's LoRA (`crs train llmcrs`): a folder; empty = CRS_HOME/checkpoints/
    # llmcrs/<trained_on or dataset>, required when trained_on is given and used if present
    # otherwise; "none" = the plain LLM.
    adapter: str = ""
    trained_on: str = ""
    # Take off each option's score under a content-free context (the untrained model); a trained
    # adapter scores the options as it was trained, uncalibrated.
    calibrate: bool = True
    # An option's score is its mean token log-probability (a sum would favour short names and,
    # for an untrained model, make the policy nearly deterministic); false: the sum.
    length_norm: bool = True
    # How a decision is read: score = each allowed option's likelihood (the local model); json =
    # parse the answer (an endpoint); auto = json with an endpoint, score otherwise.
    choice: str = "auto"
    default_subtask: str = "recommend"  # when an answer names no sub-task (counted)
    # Sub-task detection prompt (§3.1): the schema (off: "w/o SI") and k demonstrations drawn
    # from the training dialogues (0: "w/o DI").
    schema: bool = True
    demos: int = 4
    # Model matching (§3.2): off = "w/o M", every turn goes to `single_expert`.
    manage: bool = True
    single_expert: str = "retrieval"
    # Recommendation experts: comma-separated model names; empty = every registered model.
    experts: str = ""
    # Off = "w/o E": no expert; the LLM chooses among the `candidates` retrieved movies itself.
    use_experts: bool = True
    candidates: int = 50
    # Response generation (§3.4) from the structured summary; off = "w/o SG" (raw expert output).
    summary: bool = True
    # The local 135M LLM adds a sentence to the expert's words (fact-checked); off by default: its
    # sentences passed the checks and still said things the data does not ("a decade-long theme").
    local_clause: bool = False
    # Dialogue turns in each prompt, each cut to turn_chars: a 135M model on CPU reads short
    # prompts (the paper's source cap is 512 tokens).
    context_turns: int = 3
    turn_chars: int = 160
    max_new_tokens: int = 40

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise ValueError(f"llmcrs: choice must be one of {', '.join(CHOICES)}")
        if self.default_subtask not in SUBTASK:
            raise ValueError(f"llmcrs: default_subtask must be one of {', '.join(SUBTASK)}")
        if self.demos < 0:
            raise ValueError("llmcrs: demos must be >= 0")


def default_adapter(dataset_name: str) -> Path:
    """Where `crs train llmcrs --dataset NAME` keeps its adapter."""
    return get_settings().checkpoints / "llmcrs" / dataset_name
