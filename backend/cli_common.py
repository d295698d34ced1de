"""What every `crs` command shares: the console, one-line errors, common options, loading helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from backend.data import DATASETS, DataFormatError, load_dataset

console = Console()

DatasetArg = Annotated[str, typer.Option("--dataset", "-d", help=f"One of: {', '.join(DATASETS)}.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Folder of the dataset files (default: CRS_DATA_DIR/<dataset>)."
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Model config override KEY=VALUE (repeatable).")
]
SkipExistingOpt = Annotated[bool, typer.Option(help="Do nothing if the checkpoint already exists.")]
MaxStepsOpt = Annotated[
    int, typer.Option(help="Stop after this many optimizer steps (0 = all epochs).")
]


def fail(error: object) -> NoReturn:
    """Print one unwrapped error line (file:line stays greppable) and exit with status 2."""
    console.print(f"[red]error:[/red] {error}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE strings to a dict; values are parsed as JSON when they can be (numbers, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_or_fail(dataset: str, data_dir: Path | None):
    """Load a dataset, turning data errors into one readable line and exit code 2."""
    try:
        return load_dataset(dataset, data_dir)
    except (DataFormatError, FileNotFoundError, KeyError, ValueError) as err:
        fail(err)


def model_or_fail(name: str, ds, overrides: dict[str, Any]):
    from backend.registry import create_model

    try:
        return create_model(name, ds, overrides)
    except (KeyError, ValueError, FileNotFoundError) as err:
        fail(err)
