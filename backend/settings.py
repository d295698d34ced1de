"""One typed source of settings, read from the environment, shared by the CLI, backend and UIs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    """Every setting has an environment variable of the same name; the README lists them all."""

    CRS_HOME: Path = field(
        default_factory=lambda: Path(_env("CRS_HOME", str(Path.home() / ".cache" / "crs-arena")))
    )
    # Where ReDial / INSPIRED live; the repository's sibling ../shared/data by default.
    CRS_DATA_DIR: Path = field(
        default_factory=lambda: Path(
            _env(
                "CRS_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
            )
        )
    )
    # "smollm2" (bundled GGUF), a HF model directory, or a model name served at CRS_LLM_BASE_URL.
    CRS_LLM: str = field(default_factory=lambda: _env("CRS_LLM", "smollm2"))
    # An OpenAI-compatible endpoint (vLLM, SGLang, TGI); empty means a local transformers model.
    CRS_LLM_BASE_URL: str = field(default_factory=lambda: _env("CRS_LLM_BASE_URL", ""))
    CRS_LLM_API_KEY: str = field(default_factory=lambda: _env("CRS_LLM_API_KEY", "EMPTY"))
    # "auto" picks cuda > mps > cpu.
    CRS_DEVICE: str = field(default_factory=lambda: _env("CRS_DEVICE", "auto"))
    CRS_DB_URL: str = field(default_factory=lambda: _env("CRS_DB_URL", ""))
    # Base URL of the annotation app in annotators' personal links (`crs annotate` sets its own).
    CRS_ANNOTATE_URL: str = field(
        default_factory=lambda: _env("CRS_ANNOTATE_URL", "http://localhost:8501")
    )

    # Arena vote hygiene: votes per browser in any 24 hours, user messages before voting opens.
    CRS_ARENA_DAILY_VOTE_CAP: int = field(
        default_factory=lambda: _positive_int("CRS_ARENA_DAILY_VOTE_CAP", 50)
    )
    CRS_ARENA_MIN_TURNS: int = field(
        default_factory=lambda: _positive_int("CRS_ARENA_MIN_TURNS", 1)
    )

    @property
    def checkpoints(self) -> Path:
        return self.CRS_HOME / "checkpoints"

    @property
    def cache(self) -> Path:
        return self.CRS_HOME / "cache"

    @property
    def db_url(self) -> str:
        return self.CRS_DB_URL or f"sqlite:///{self.CRS_HOME / 'crs-arena.sqlite'}"

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _positive_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r}: give a whole number of at least 1")
    return int(raw)


def get_settings() -> Settings:
    """Fresh settings from the current environment (tests change it with monkeypatch)."""
    return Settings()
