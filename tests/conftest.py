"""Shared fixtures: a tiny hand-made catalog and dialogues, and an isolated CRS_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.catalog import Catalog
from backend.data.base import Dataset
from backend.llm import LLM, resolve_model_dir
from backend.types import Dialogue, Interaction, Item, Turn, UserHistory

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test writes caches and checkpoints under a temporary CRS_HOME, never ~/.cache."""
    home = tmp_path_factory.getbasetemp() / "crs-home"
    monkeypatch.setenv("CRS_HOME", str(home))
    return home


def make_items() -> list[Item]:
    return [
        Item(
            id="1",
            title="Heat",
            year=1995,
            genres=("Crime", "Thriller"),
            description="A heist crew and a detective.",
            people={"director": ("Michael Mann",), "star": ("Al Pacino", "Robert De Niro")},
        ),
        Item(
            id="2",
            title="Toy Story",
            year=1995,
            genres=("Animation", "Comedy"),
            description="Toys come alive.",
        ),
        Item(
            id="3",
            title="The Usual Suspects",
            year=1995,
            genres=("Crime", "Mystery"),
            description="A lineup of crooks.",
        ),
        Item(
            id="4",
            title="Alien",
            year=1979,
            genres=("Horror", "Sci-Fi"),
            description="A creature stalks a ship's crew.",
        ),
        Item(
            id="5",
            title="Aliens",
            year=1986,
            genres=("Action", "Sci-Fi"),
            description="Marines fight creatures.",
        ),
        Item(
            id="6",
            title="Heat",
            year=1986,
            genres=("Action",),
            description="A bodyguard in Las Vegas.",
        ),
    ]


def make_dataset() -> Dataset:
    d1 = Dialogue(
        id="d1",
        user_id="u1",
        turns=[
            Turn(role="user", text="I loved Heat (1995), any crime movies?", items=["1"]),
            Turn(role="system", text="Try The Usual Suspects (1995).", items=["3"]),
            Turn(role="user", text="Seen it. Something with aliens?"),
            Turn(role="system", text="Alien (1979) is a classic.", items=["4"]),
        ],
    )
    d2 = Dialogue(
        id="d2",
        user_id="u2",
        turns=[
            Turn(role="user", text="Something for kids please"),
            Turn(role="system", text="Toy Story (1995)!", items=["2"]),
        ],
    )
    histories = {
        "u1": UserHistory(
            user_id="u1",
            interactions=[
                Interaction(item_id="1", rating=5, time=1),
                Interaction(item_id="2", rating=1, time=2),
                Interaction(item_id="4", rating=4, time=3),
            ],
        ),
    }
    return Dataset(
        name="tiny",
        catalog=Catalog(make_items(), name="tiny"),
        splits={"train": [d1, d2], "test": [d1, d2]},
        histories=histories,
    )


@pytest.fixture
def tiny_dataset() -> Dataset:
    return make_dataset()


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer, saved as a HF folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with pytest.MonkeyPatch.context() as mp:
        # Session fixtures run before the autouse per-test CRS_HOME is set; use the same folder.
        mp.setenv("CRS_HOME", str(tmp_path_factory.getbasetemp() / "crs-home"))
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2"))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class ChatOnlyLLM(LLM):
    """Base of the test LLMs that only chat: the other calls fail loudly, tokens are words."""

    def stream(self, messages, config=None):
        raise NotImplementedError

    def complete(self, prompt, config=None):
        raise NotImplementedError

    def text_logprobs(self, text, top=0):
        raise NotImplementedError

    def embed(self, texts):
        raise NotImplementedError

    def count_tokens(self, text):
        return len(text.split())


class Lines(ChatOnlyLLM):
    """An LLM that says its given lines in order, then repeats the last; keeps the prompts."""

    name = "lines"

    def __init__(self, *lines: str):
        super().__init__()
        self.lines, self.prompts = list(lines), []

    def chat_batch(self, conversations, config=None, prefixes=None):
        self.prompts += [c[-1]["content"] for c in conversations]
        return [self.lines.pop(0) if len(self.lines) > 1 else self.lines[0] for _ in conversations]
