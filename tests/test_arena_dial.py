"""CRSArena-Dial import and export: the hand-made fixture round-trips through our leaderboard."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from backend.cli import app
from backend.types import Dialogue, Turn
from db.arena import list_votes, record_vote, votes_to_battles
from db.crsarena_dial import SOURCE, export_dial, import_dial
from db.ranking import fit_bradley_terry
from db.session import init_db

FIXTURE = Path(__file__).parent / "fixtures" / "crsarena_dial"


def _votes(engine) -> list[tuple]:
    return [
        (v.round_id, v.model_a, v.model_b, v.left_model, v.vote, v.session_id, v.voted_at)
        for v in list_votes(engine)
    ]


def test_fixture_round_trips_through_import_leaderboard_and_export(tmp_path):
    engine = init_db(f"sqlite:///{tmp_path / 'one.sqlite'}")
    (report,) = import_dial(engine, FIXTURE).values()
    assert (report.imported, report.already_present) == (3, 0)
    assert len(report.skipped) == 1 and "'nobody'" in report.skipped[0]
    again = import_dial(engine, FIXTURE)["fixture"]
    assert (again.imported, again.already_present) == (0, 3)  # re-import changes nothing

    votes = list_votes(engine)
    assert {v.source for v in votes} == {SOURCE} and {v.mode for v in votes} == {"blind"}
    first = votes[0]
    assert (first.model_a, first.model_b, first.vote, first.session_id) == (
        "kbrd_redial",
        "unicrs_redial",
        "A",
        "u-0001",
    )
    conversation = Dialogue.model_validate(first.conversation_a)
    assert [t.role for t in conversation.turns] == ["user", "system", "user", "system"]
    assert conversation.meta["sentiment"] == "satisfied"
    second = Dialogue.model_validate(votes[1].conversation_a)
    assert second.meta["vote_feedback"].endswith('"Nice".')
    assert votes_to_battles(votes) == [
        ("kbrd_redial", "unicrs_redial", "A"),
        ("unicrs_redial", "chatgpt_redial", "B"),
        ("chatgpt_redial", "kbrd_redial", "tie"),
    ]
    ratings = fit_bradley_terry(votes_to_battles(votes), l2=0.1)
    assert set(ratings) == {"kbrd_redial", "unicrs_redial", "chatgpt_redial"}

    written, notes = export_dial(engine, tmp_path / "out", "fixture")
    assert (written, notes) == (3, [])
    exported = json.loads((tmp_path / "out" / "crs_arena_dial_fixture.json").read_text())
    original = {
        d["conversation ID"]: d for d in json.loads(next(FIXTURE.glob("*.json")).read_text())
    }
    for dialogue in exported:
        assert dialogue == original[dialogue["conversation ID"]]

    other = init_db(f"sqlite:///{tmp_path / 'two.sqlite'}")
    import_dial(other, tmp_path / "out")
    assert _votes(other) == _votes(engine)


def test_our_votes_export_with_both_bad_as_tie(tmp_path):
    engine = init_db(f"sqlite:///{tmp_path / 'ours.sqlite'}")
    conv = Dialogue(
        id="c", turns=[Turn(role="user", text="hi"), Turn(role="system", text="Heat?", items=["1"])]
    )
    for round_id, vote in (("r1", "B"), ("r2", "both_bad")):
        record_vote(
            engine,
            round_id=round_id,
            model_a="popularity",
            model_b="retrieval",
            left_model="retrieval",
            vote=vote,
            conversation_a=conv,
            conversation_b=conv,
            session_id="browser-1",
        )
    export_dial(engine, tmp_path / "out")
    with (tmp_path / "out" / "votes_arena.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["user_id"], r["crs1"], r["crs2"], r["vote"]) for r in rows] == [
        ("r1", "retrieval", "popularity", "popularity"),
        ("r2", "retrieval", "popularity", "tie"),
    ]
    dialogues = json.loads((tmp_path / "out" / "crs_arena_dial_arena.json").read_text())
    assert {d["conversation ID"] for d in dialogues} == {
        "popularity_r1",
        "retrieval_r1",
        "popularity_r2",
        "retrieval_r2",
    }
    assert dialogues[2]["metadata"] == {"sentiment": "frustrated"}  # both bad
    assert dialogues[0]["conversation"][1]["participant"] == "AGENT"


def test_cli_import_and_export(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    runner = CliRunner()
    result = runner.invoke(app, ["arena", "import", str(FIXTURE), "--db-url", url])
    assert result.exit_code == 0, result.output
    assert "3 votes imported" in result.output and "1 skipped" in result.output
    result = runner.invoke(app, ["arena", "export", str(tmp_path / "x"), "--db-url", url])
    assert result.exit_code == 0 and "3 votes written" in result.output
    missing = runner.invoke(app, ["arena", "import", str(tmp_path / "nope"), "--db-url", url])
    assert missing.exit_code != 0 and "not a directory" in missing.output
