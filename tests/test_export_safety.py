"""Exported files are safe to open: no spreadsheet formulas in CSV, no HTML in figures or Markdown.

Names and reasons come from annotators, task files and model outputs, so an export must show them
as text: a CSV cell starting with ``=`` is a formula in Excel or LibreOffice, and plotly and
Markdown viewers draw HTML tags.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import update

from db.analysis import figures, judgments_frame, paper_table
from db.export import csv_safe, export_campaign
from db.schema import Annotator, Judgment, System
from db.session import get_engine, init_db, session_scope
from tests.test_analysis import _build_campaign

FORMULA = '=HYPERLINK("http://x","y")'
REASON = "@SUM(1)"
HTML = "<img src=x onerror=alert(1)>"
HTML_LABEL = f"{HTML}@v2"  # the system is versioned: labelled name@version


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator:
    """The test_analysis campaign with a formula and an HTML tag for system names, a formula in
    every pairwise reason and in an annotator's name (a column header of the wide tables)."""
    url = f"sqlite:///{tmp_path / 'hostile.sqlite'}"
    engine = init_db(url)
    _build_campaign(engine)
    with session_scope(engine) as session:
        session.execute(update(System).where(System.name == "alpha").values(name=FORMULA))
        session.execute(update(System).where(System.name == "gamma").values(name=HTML))
        session.execute(update(Annotator).where(Annotator.name == "ann2").values(name="+ann2"))
        session.execute(update(Judgment).where(Judgment.choice.is_not(None)).values(reason=REASON))
    yield engine
    get_engine(url).dispose()


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_csv_safe_prefixes_formula_text_and_leaves_numbers_alone() -> None:
    table = pd.DataFrame(
        {
            "text": ["=1+1", "+1", "-x", "@SUM(1)", "\tx", "\rx", "plain", None],
            "number": [-1, -2, 3, -4, 5, 6, 7, 8],
            "real": [-1.5, np.nan, 0.0, 2.5, -0.1, 1.0, 1.0, 1.0],
            "=header": ["a", "b", "c", "d", "e", "f", "g", "h"],
        }
    )
    safe = csv_safe(table)
    assert safe["text"].tolist()[:7] == ["'=1+1", "'+1", "'-x", "'@SUM(1)", "'\tx", "'\rx", "plain"]
    assert pd.isna(safe["text"].iloc[7])
    assert list(safe.columns) == ["text", "number", "real", "'=header"]
    pd.testing.assert_series_equal(safe["number"], table["number"])  # -1 stays the number -1
    pd.testing.assert_series_equal(safe["real"], table["real"])
    assert table["text"].iloc[0] == "=1+1"  # the caller's frame is not changed


def test_exported_csv_defuses_formulas_and_json_parquet_keep_the_text(
    hostile, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    export_campaign(hostile, "study", out, n_boot=20)

    rows = _csv_rows(out / "judgments.csv")
    assert {row["system"] for row in rows if row["kind"] == "rating"} == {f"'{FORMULA}", HTML_LABEL}
    pairs = [row for row in rows if row["kind"] == "pairwise"]
    assert {row["system_a"] for row in pairs} == {f"'{FORMULA}"}
    assert {row["reason"] for row in pairs} == {f"'{REASON}"}
    assert {row["annotator"] for row in rows} == {"ann1", "'+ann2", "ann3"}
    # Ratings stay numbers.
    assert sorted({int(row["rating"]) for row in rows if row["rating"]}) == [1, 2, 3, 4, 5]
    assert "'+ann2" in _csv_rows(out / "judgments_wide_rating.csv")[0]  # the header too
    summary = _csv_rows(out / "rating_summary.csv")
    assert {row["system"] for row in summary} == {f"'{FORMULA}", HTML_LABEL}
    pair = _csv_rows(out / "pairwise_summary.csv")[0]
    assert (pair["system_1"], pair["system_2"]) == (HTML_LABEL, f"'{FORMULA}")  # "<" sorts first

    # JSON and parquet keep the exact text.
    records = json.loads((out / "judgments.json").read_text(encoding="utf-8"))
    assert {r["reason"] for r in records if r["kind"] == "pairwise"} == {REASON}
    assert FORMULA in {r["system"] for r in records}
    parquet = pd.read_parquet(out / "judgments.parquet")
    assert set(parquet["system_a"].dropna()) == {FORMULA}
    assert "+ann2" in set(parquet["annotator"])


def _decoded(figure) -> str:
    """A figure's JSON with plotly's ``\\u003c`` escapes decoded, as the browser sees it."""
    return json.dumps(json.loads(figure.to_json()), ensure_ascii=False)


def test_figures_and_the_markdown_table_escape_html_in_names(hostile, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_campaign(hostile, "study", out, formats=("json",), n_boot=20)
    markdown = (out / "paper_table.md").read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown and "<img" not in markdown

    for name, figure in figures(judgments_frame(hostile, "study")).items():
        text = _decoded(figure)
        assert "&lt;img" in text, name
        assert "<img" not in text, name


def test_html_in_criterion_and_system_names_is_escaped_in_every_label() -> None:
    frame = pd.DataFrame(
        [
            {
                "task_id": t,
                "annotator": f"r{t}",
                "criterion": "<b>bold</b>",
                "rating": 1 + t % 5,
                "system": system,
                "choice": None,
                "system_a": None,
                "system_b": None,
            }
            for t, system in enumerate([HTML, "plain", "R&D"] * 2)
        ]
        + [
            {
                "task_id": 100 + t,
                "annotator": "r0",
                "criterion": "<i>overall</i>",
                "rating": None,
                "system": None,
                "choice": choice,
                "system_a": HTML,
                "system_b": "plain",
            }
            for t, choice in enumerate(["A", "B", "tie"])
        ]
    ).astype({"rating": "Int64"})
    result = figures(frame)
    scores = _decoded(result["scores"])
    assert "&lt;b&gt;bold&lt;/b&gt;" in scores and "<b>" not in scores
    assert {trace.name for trace in result["scores"].data} == {
        "&lt;img src=x onerror=alert(1)&gt;",
        "plain",
        "R&amp;D",
    }
    heatmap = result["win_rate_i_overall_i"]
    labels = [*heatmap.data[0].x, *heatmap.data[0].y]
    assert "&lt;img src=x onerror=alert(1)&gt;" in labels and "plain" in labels
    decoded = _decoded(heatmap)
    assert "<i>" not in decoded and "<img" not in decoded

    markdown = paper_table(frame, "markdown")
    assert "&lt;b&gt;bold&lt;/b&gt;" in markdown and "<b>" not in markdown
    assert "R&amp;D" in markdown
    latex = paper_table(frame, "latex")
    assert r"R\&D" in latex  # LaTeX has its own escaping
