"""U-NEED's format samples (the LLM ⇄ CRS paper's data): the loader and the Understand samples
rebuilt exactly as the dataset ships them."""

from __future__ import annotations

import json

import pytest

from backend.data import load_dataset
from backend.data.base import DataFormatError
from backend.data.u_need import frames, load_u_need, parse_frames, understand_samples
from tests.conftest import SHARED_DATA

ROOT = SHARED_DATA / "u_need_samples"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="needs ../shared/data/u_need_samples")


def test_the_samples_load_as_three_splits_with_hidden_turn_annotations(monkeypatch):
    monkeypatch.setenv("CRS_DATA_DIR", str(SHARED_DATA))
    dataset = load_dataset("u-need")
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 1, "dev": 1, "test": 1}
    (test,) = dataset.split("test")
    assert [t.role for t in test.turns[:3]] == ["user", "system", "user"]
    assert test.turns[6].items == ["577681663455"]
    notes = test.meta["turns"]
    assert notes[0]["act"] == "用户需求" and len(notes[6]["candidates"]) == 20
    assert "577681663455" in notes[6]["candidates"] and "577681663455" in dataset.catalog
    assert "turns" not in test.prefix(3).meta  # the labels never reach a model


@pytest.mark.parametrize("name,split", [("train", "train"), ("valid", "dev"), ("test", "test")])
def test_understand_samples_are_rebuilt_exactly_as_shipped(name, split):
    dataset = load_u_need(ROOT)
    mine = [s for d in dataset.split(split) for s in understand_samples(d)]
    shipped = json.loads((ROOT / "crs_task_samples" / f"{name}_sample.json").read_text())
    for sample in shipped:
        (match,) = [m for m in mine if m["input"] == sample["input"]]
        assert match["label"] == sample["label"]
        assert match["turn"] == sample["sample_index_in_dialogue"]


def test_frames_round_trip_including_a_staff_question_without_a_value():
    attributes = [{"key": "年龄", "value": ""}, {"key": "肤质", "value": "偏油"}]
    assert frames(attributes) == "年龄：；肤质：偏油"
    assert parse_frames("年龄：；肤质：偏油") == [("年龄", ""), ("肤质", "偏油")]
    assert parse_frames("genre: Horror; decade: 1980s") == [
        ("genre", "Horror"),
        ("decade", "1980s"),
    ]
    assert parse_frames("no frames here") == []


def test_a_folder_without_the_dialogues_says_what_is_missing(tmp_path):
    with pytest.raises(DataFormatError, match="train_dialogue.json.*u_need_samples"):
        load_u_need(tmp_path)
