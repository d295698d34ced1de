"""The admin Results tab in process (streamlit.testing AppTest): agreement per annotator."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.agreement import annotator_agreement
from db.analysis import judgments_frame
from db.annotation import create_annotator
from db.session import get_engine, init_db
from tests.test_analysis import _build_campaign
from tests.test_annotation_app import open_app


def test_results_tab_lists_the_annotator_who_disagrees_most_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'admin.sqlite'}"
    monkeypatch.setenv("CRS_DB_URL", url)
    engine = init_db(url)
    _build_campaign(engine)  # campaign "study": ann1-3 judge every task
    _, token = create_annotator(engine, "boss", role="admin")
    try:
        admin = open_app(token)
        assert not admin.exception
        assert "Agreement per annotator" in [s.value for s in admin.subheader]
        shown = next(d.value for d in admin.dataframe if "alpha_delta" in d.value.columns)
        expected = annotator_agreement(judgments_frame(engine, "study"))
        # One row per annotator × criterion, the largest rise in alpha without them first.
        assert len(shown) == len(expected) == 6
        assert shown["alpha_delta"].iloc[0] == expected["alpha_delta"].max()
        assert shown["alpha_delta"].dropna().is_monotonic_decreasing
    finally:
        get_engine(url).dispose()
