"""Campaign templates, task creation from model outputs, CSV/JSONL import and `crs tasks`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from backend.cli import app
from backend.types import Dialogue, ScoredItem, Turn
from db.campaigns import TEMPLATES, create_campaign, find_campaign
from db.schema import Context, Response, System, Task
from db.session import init_db, session_scope
from db.tasks import (
    SystemResponse,
    TaskFileError,
    TaskRecord,
    add_tasks,
    read_task_file,
    records_from_outputs,
    sample_contexts,
)

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()

CONTEXT = [
    {"role": "user", "text": "I loved Heat (1995). Any crime films?"},
]
GOOD_ROWS = [
    {
        "context_id": "c1",
        "source": "redial",
        "context": CONTEXT,
        "system_a": "retrieval",
        "response_a": "Try The Usual Suspects.",
        "items_a": ["The Usual Suspects (1995)"],
    },
    {
        "context_id": "c1",
        "source": "redial",
        "context": CONTEXT,
        "system_a": "retrieval",
        "response_a": "Try The Usual Suspects.",
        "items_a": ["The Usual Suspects (1995)"],
        "system_b": "popularity",
        "response_b": "Star Wars!",
        "items_b": [{"item_id": "50", "title": "Star Wars (1977)"}],
    },
]


@pytest.fixture
def db_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'tasks.sqlite'}"
    init_db(url)
    return url


def count(url: str, model) -> int:
    with session_scope(init_db(url), write=False) as session:
        return session.scalar(select(func.count()).select_from(model))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_templates_follow_the_papers_protocols():
    assert {"presales", "llm-redial", "pecrs", "arena", "crs-arena"} <= set(TEMPLATES)
    presales = TEMPLATES["presales"]
    assert [(c["name"], c["scale"]) for c in presales.stored_criteria()] == [
        ("informativeness", [1, 5]),
        ("relevance", [1, 5]),
    ]
    redial = TEMPLATES["llm-redial"]
    rating = [c for c in redial.stored_criteria() if c["kind"] == "rating"]
    assert [c["name"] for c in rating] == [
        "fluency",
        "informativeness",
        "logic",
        "coherence",
    ]
    assert all(c["scale"] == [0, 2] and len(c["labels"]) == 3 for c in rating)
    assert redial.task_kinds == ["pairwise", "rating"]
    pecrs = TEMPLATES["pecrs"]
    assert pecrs.task_kinds == ["pairwise"] and all(
        c["scale"] == ["A", "B", "tie"] for c in pecrs.stored_criteria()
    )
    # The project's own protocol: fluency, informativeness, relevance 1-5, and a preference.
    ours = TEMPLATES["crs-arena"].stored_criteria()
    assert [(c["name"], c["kind"], c["scale"]) for c in ours] == [
        ("fluency", "rating", [1, 5]),
        ("informativeness", "rating", [1, 5]),
        ("relevance", "rating", [1, 5]),
        ("preference", "pairwise", ["A", "B", "tie"]),
    ]


def test_create_campaign_is_idempotent_and_refuses_a_protocol_mix(db_url):
    engine = init_db(db_url)
    first = create_campaign(engine, "study", "presales", overlap=2)
    assert create_campaign(engine, "study", "presales").id == first.id and first.overlap == 2
    with pytest.raises(ValueError, match="already exists with template 'presales'"):
        create_campaign(engine, "study", "pecrs")
    with pytest.raises(KeyError, match="choose one of"):
        create_campaign(engine, "other", "nope")
    with (
        pytest.raises(LookupError, match="the campaigns are: study"),
        session_scope(engine, write=False) as session,
    ):
        find_campaign(session, "missing")


def test_jsonl_import_stores_shared_contexts_and_is_idempotent(db_url, tmp_path):
    engine = init_db(db_url)
    create_campaign(engine, "mixed", "llm-redial")
    records = read_task_file(write_jsonl(tmp_path / "t.jsonl", GOOD_ROWS))
    assert [r.kind for r in records] == ["rating", "pairwise"]
    assert add_tasks(engine, "mixed", records) == 2
    assert add_tasks(engine, "mixed", records) == 0  # a re-import adds nothing
    assert (count(db_url, Task), count(db_url, Context), count(db_url, Response)) == (2, 1, 2)
    with session_scope(engine, write=False) as session:
        star_wars = session.scalars(
            select(Response).join(System).where(System.name == "popularity")
        ).one()
        assert star_wars.items[0]["title"] == "Star Wars (1977)"


def test_csv_import_reads_json_cells_and_plain_text_contexts(db_url, tmp_path):
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(
            f, ["context_id", "context", "system_a", "response_a", "system_b", "response_b", "gold"]
        )
        writer.writeheader()
        writer.writerow(
            {
                "context_id": "c9",
                "context": "User: hi, a comedy?\nSystem: Sure, which era?\nUser: the 90s",
                "system_a": "x",
                "response_a": "Liar Liar",
                "system_b": "y",
                "response_b": "Heat",
                "gold": '{"fluency": "A"}',
            }
        )
    (record,) = read_task_file(path)
    assert [t.role for t in record.context.turns] == ["user", "system", "user"]
    assert record.gold == {"fluency": "A"} and record.kind == "pairwise"
    engine = init_db(db_url)
    create_campaign(engine, "p", "pecrs")
    assert add_tasks(engine, "p", [record]) == 1


def test_a_bad_file_names_every_bad_line_and_imports_nothing(db_url, tmp_path):
    rows = [json.dumps(GOOD_ROWS[0]), json.dumps({**GOOD_ROWS[0], "response_a": ""}), "[1, 2]"]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + '\n{"context_id": "c2", "cont')  # last line cut short
    with pytest.raises(TaskFileError) as caught:
        read_task_file(path)
    message = str(caught.value)
    assert "3 bad row(s), nothing was imported" in message
    assert f"{path}:2: missing field(s) response_a" in message
    assert f"{path}:3: expected a JSON object" in message
    assert f"{path}:4: not JSON" in message and "cut short" in message
    assert count(db_url, Task) == 0


def test_a_row_the_campaign_cannot_judge_rolls_back_the_whole_batch(db_url, tmp_path):
    engine = init_db(db_url)
    create_campaign(engine, "ratings", "presales")
    records = read_task_file(write_jsonl(tmp_path / "t.jsonl", GOOD_ROWS))  # row 2 is pairwise
    with pytest.raises(
        ValueError, match=r"t\.jsonl:2: campaign 'ratings' has no pairwise criteria"
    ):
        add_tasks(engine, "ratings", records)
    assert count(db_url, Task) == 0 and count(db_url, Context) == 0
    bad_gold = [
        TaskRecord("s", "c", Dialogue(id="c"), records[0].response_a, gold={"relevance": 9})
    ]
    with pytest.raises(ValueError, match=r"gold relevance=9 is not one of \[1, 2, 3, 4, 5\]"):
        add_tasks(engine, "ratings", bad_gold)


def test_records_cover_every_system_and_every_pair_per_context():
    dialogue = Dialogue(
        id="d",
        turns=[Turn(role="user", text="hi"), Turn(role="system", text="Heat", items=["1"])],
    )
    contexts = sample_contexts([dialogue], n=5)
    assert contexts == [(dialogue, 1)]
    outputs = {
        name: [
            SystemResponse(
                system=name, text=f"{name} says", items=[ScoredItem(item_id="1", score=1)]
            )
        ]
        for name in ("a", "b", "c")
    }
    records = records_from_outputs("tiny", contexts, outputs, ["rating", "pairwise"])
    assert sum(r.kind == "rating" for r in records) == 3
    pairs = [(r.response_a.system, r.response_b.system) for r in records if r.kind == "pairwise"]
    assert pairs == [("a", "b"), ("a", "c"), ("b", "c")]
    assert all(r.context.turns == dialogue.turns[:1] for r in records)  # the model saw the prefix


def test_cli_tasks_create_runs_models_on_redial_and_adds_attention_checks(db_url):
    args = ["tasks", "create", "--campaign", "cmp", "--systems", "popularity,human"]
    args += ["--dataset", "redial", "--data-dir", str(FIXTURES / "redial"), "--split", "test"]
    args += ["--n", "3", "--all-turns", "--template", "pecrs", "--attention-checks", "1"]
    result = runner.invoke(app, [*args, "--db-url", db_url])
    assert result.exit_code == 0, result.output
    engine = init_db(db_url)
    with session_scope(engine, write=False) as session:
        tasks = session.scalars(select(Task)).all()
        systems = {s.name for s in session.scalars(select(System))}
        gold = [t.gold for t in tasks if t.gold]
    assert len(tasks) == 3 + 1 and all(t.kind == "pairwise" for t in tasks)
    assert {"popularity", "human", "attention-check"} <= systems
    assert gold == [{"fluency": "A", "relevancy": "A"}]


def test_cli_import_reports_the_bad_line_without_a_traceback(db_url, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD_ROWS[0], {"context_id": "x"}])
    result = runner.invoke(
        app, ["tasks", "import", str(path), "--campaign", "c", "--db-url", db_url]
    )
    assert result.exit_code == 2 and f"{path}:2: missing field(s)" in result.output
    assert "Traceback" not in result.output and count(db_url, Task) == 0


def test_cli_tasks_create_from_saved_outputs_samples_only_answered_turns(db_url, tmp_path):
    from backend.data import load_dataset

    dialogue = load_dataset("redial", FIXTURES / "redial").split("test")[0]
    turn = next(i for i, t in enumerate(dialogue.turns) if i > 0 and t.role == "system")
    saved = write_jsonl(
        tmp_path / "preds.jsonl",
        [{"dialogue_id": dialogue.id, "turn": turn, "text": "Saved reply", "top10": []}],
    )
    args = ["tasks", "create", "--campaign", "saved", "--systems", "old,human", "--n", "5"]
    args += ["--dataset", "redial", "--data-dir", str(FIXTURES / "redial"), "--all-turns"]
    args += ["--template", "pecrs", "--outputs", f"old={saved}", "--db-url", db_url]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with session_scope(init_db(db_url), write=False) as session:
        (task,) = session.scalars(select(Task)).all()
        assert task.response_a.text == "Saved reply"
        assert task.context.external_id == f"{dialogue.id}:{turn}"
