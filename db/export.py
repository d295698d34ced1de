"""Export a human-evaluation campaign to files a researcher can open anywhere, offline.

``export_campaign`` writes, into one folder:

* ``judgments.<fmt>`` — long format, one row per latest judgment (``db.analysis.judgments_frame``);
* ``judgments_wide_rating.<fmt>`` / ``judgments_wide_pairwise.<fmt>`` — one row per task ×
  criterion, one column per annotator (for the task kinds the campaign has);
* ``rating_summary``, ``pairwise_summary``, ``pairwise_ratings`` (Bradley–Terry), ``agreement``,
  ``annotator_agreement`` and ``time_on_task`` (median seconds per annotator and per system) tables
  in the same formats; the long table has each judgment's ``seconds`` and ``too_fast`` flag;
* ``paper_table.md`` and ``paper_table.tex`` (when there are ratings);
* ``figure_<name>.html`` — standalone plotly pages with plotly.js inlined (no CDN);
* ``metrics.json`` — counts, what was dropped, and every summary, in one JSON document.

The CSV files are safe to open in a spreadsheet: a text cell (or header) that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` so that it is not run as a
formula (OWASP, "CSV Injection"). Numbers are left alone, negative ones included; the JSON and
parquet files keep the exact text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from db.analysis import (
    agreement,
    annotator_agreement,
    figures,
    judgments_frame,
    pairwise_ratings,
    pairwise_summary,
    paper_table,
    rating_summary,
    time_summary,
    wide_frame,
)

log = logging.getLogger(__name__)

FORMATS = ("csv", "json", "parquet")

# First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _defuse(value: Any) -> Any:
    """A string that a spreadsheet would run as a formula, with a ``'`` in front; else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells and column names cannot start a spreadsheet formula.

    Only ``str`` values change (see ``FORMULA_STARTS``); numbers, timestamps and missing values
    keep their type, so ``-1`` stays a number.
    """
    safe = table.copy()
    safe.columns = [_defuse(name) for name in table.columns]
    for position in range(table.shape[1]):
        column = table.iloc[:, position]
        if pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column):
            safe.isetitem(position, column.map(_defuse))
    return safe


def _write_table(table: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        csv_safe(table).to_csv(path, index=False)
    elif path.suffix == ".json":
        table.to_json(path, orient="records", date_format="iso", indent=1)
    else:
        table.to_parquet(path, index=False)
    return path


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NaN becomes null, timestamps ISO strings (pandas' JSON writer)."""
    return json.loads(table.to_json(orient="records", date_format="iso"))


def export_campaign(
    engine: Engine | None,
    campaign: str,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    include_excluded: bool = False,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Path]:
    """Write the judgments of ``campaign`` and their analysis into ``out_dir``; return the paths.

    Every table is written once per format in ``formats`` (any of csv, json, parquet); the paper
    table, the figures and ``metrics.json`` are always written. Judgments of excluded annotators
    are left out unless ``include_excluded``; attention-check (gold) tasks always are.
    ``n_boot`` / ``seed`` drive the bootstrap intervals. An unknown campaign raises
    ``LookupError`` naming the campaigns that exist.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"`formats` is {list(formats)}; use one or more of {', '.join(FORMATS)}")
    frame = judgments_frame(engine, campaign, include_excluded=include_excluded)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    summaries = {
        "rating_summary": rating_summary(frame, n_boot=n_boot, seed=seed),
        "pairwise_summary": pairwise_summary(frame),
        "pairwise_ratings": pairwise_ratings(frame, n_boot=n_boot, seed=seed),
        "agreement": agreement(frame, n_boot=n_boot, seed=seed),
        "annotator_agreement": annotator_agreement(frame),
        "time_on_task": time_summary(frame),
    }
    tables = {"judgments": frame}
    for kind in sorted(frame["kind"].unique()):
        tables[f"judgments_wide_{kind}"] = wide_frame(frame, kind)
    tables |= summaries

    written = [
        _write_table(table, out / f"{name}.{fmt}")
        for name, table in tables.items()
        for fmt in formats
    ]
    if frame["rating"].notna().any():
        for fmt, suffix in (("markdown", "md"), ("latex", "tex")):
            path = out / f"paper_table.{suffix}"
            path.write_text(paper_table(frame, fmt), encoding="utf-8")
            written.append(path)
    for name, figure in figures(frame).items():
        path = out / f"figure_{name}.html"
        # plotly.min.js is written once beside the pages, so they open without a network.
        figure.write_html(path, include_plotlyjs="directory", full_html=True)
        written.append(path)
    if (out / "plotly.min.js").exists():
        written.append(out / "plotly.min.js")

    metrics_path = out / "metrics.json"
    metrics = {
        "campaign": campaign,
        "exported_at": datetime.now(UTC).isoformat(),
        "include_excluded": include_excluded,
        "counts": {
            "judgments": len(frame),
            "tasks": int(frame["task_id"].nunique()),
            "annotators": int(frame["annotator"].nunique()),
            "systems": int(
                pd.concat([frame["system"], frame["system_a"], frame["system_b"]]).nunique()
            ),
        },
        "dropped_judgments": frame.attrs.get("dropped", {}),
        "criteria": frame.attrs.get("criteria", []),
        **{name: _records(table) for name, table in summaries.items()},
        "files": sorted(path.name for path in [*written, metrics_path]),
    }
    metrics_path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    written.append(metrics_path)
    log.info(
        "exported campaign %r: %d judgments, %d files in %s",
        campaign,
        len(frame),
        len(written),
        out,
    )
    return written
