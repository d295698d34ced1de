"""Dataset loaders by name: ``load_dataset("redial")`` and friends, cached per process."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from backend.data.base import DataFormatError, Dataset
from backend.data.heldout import load_movielens_heldout
from backend.data.inspired import load_inspired
from backend.data.llm_redial import embedded_root, load_llm_redial
from backend.data.movielens import default_root, load_movielens_100k
from backend.data.redial import load_redial
from backend.data.u_need import load_u_need
from backend.settings import get_settings

__all__ = ["DATASETS", "DataFormatError", "Dataset", "load_dataset"]

# name -> (folder under CRS_DATA_DIR, or None for a copy that ships with the code; loader)
_LOADERS: dict[str, tuple[str | None, Callable[[Path], Dataset]]] = {
    "movielens-100k": (None, load_movielens_100k),
    "movielens-100k-heldout": (None, load_movielens_heldout),
    "llm-redial": (None, load_llm_redial),
    "redial": ("redial", load_redial),
    "inspired": ("inspired", lambda path: load_inspired(path, source="pecrs")),
    "inspired-raw": ("inspired", lambda path: load_inspired(path, source="raw")),
    "u-need": ("u_need_samples", load_u_need),
}
_SHIPPED = {
    "movielens-100k": default_root,
    "movielens-100k-heldout": default_root,
    "llm-redial": embedded_root,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


@lru_cache(maxsize=16)
def _load_cached(name: str, data_dir: Path) -> Dataset:
    return _LOADERS[name][1](data_dir)


def load_dataset(name: str, data_dir: Path | None = None) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``data_dir``.

    ``data_dir`` defaults to ``CRS_DATA_DIR/<redial|inspired>``, for MovieLens to the copy
    inside the installed recbole package, and for llm-redial to the generated set in the repository. The parsed dataset is cached per (name, resolved folder)
    for the life of the process, so callers share one object and must not modify it.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    folder = _LOADERS[name][0]
    if data_dir is None:
        data_dir = _SHIPPED[name]() if folder is None else get_settings().CRS_DATA_DIR / folder
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        hint = {
            "movielens-100k": "run `pip install --no-deps recbole`",
            "llm-redial": "run `crs data generate --out FOLDER` and pass that folder",
        }.get(name, "set CRS_DATA_DIR")
        raise FileNotFoundError(
            f"{name} data folder {data_dir} does not exist; pass --data-dir or {hint}"
        )
    return _load_cached(name, data_dir)
