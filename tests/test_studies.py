"""Studies a researcher defines (campaign files, onboarding, order, crowd links, time on task)
and the import defects of issue 12 (colliding contexts, half imports, files as people have them).
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, func, select, update

from db.analysis import judgments_frame, time_summary
from db.annotation import (
    assign_tasks,
    create_annotator,
    load_task,
    log_open,
    qualification,
    queue,
    skip,
    submit,
)
from db.campaigns import CampaignFileError, create_campaign_from_file, list_campaigns, load_spec
from db.crowd import CrowdLinkError, completion, crowd_annotator, parse_link
from db.schema import Assignment, Campaign, Event, Task, TaskImport
from db.session import init_db, session_scope
from db.tasks import TaskFileError, import_task_file

CONTEXT = [{"role": "user", "text": "I loved Heat (1995). Any crime films?"}]

# A study with every kind of criterion; the browser test takes it through a crowd link too.
STUDY = {
    "name": "study",
    "guidelines": "Read the whole dialogue first.",
    "overlap": 1,
    "criteria": [
        {
            "name": "fluency",
            "kind": "likert",
            "question": "How fluent is it?",
            "scale": 5,
            "labels": ["Unreadable", "Awkward", "OK", "Fluent", "Perfect"],
        },
        {
            "name": "relevance",
            "kind": "likert",
            "question": "Does it fit the request?",
            "scale": [1, 3],
            "labels": ["Off topic", "Partly", "Fits"],
        },
        {
            "name": "humour",
            "kind": "likert",
            "question": "Is it funny?",
            "scale": 3,
            "labels": ["Not at all", "A little", "Very"],
            "required": False,
            "allow_na": True,
        },
        {"name": "preference", "kind": "pairwise", "question": "better overall"},
    ],
    "onboarding": {"pass_required": 1},
    "min_seconds": 5,
    "completion_code": "C0DE42",
    "completion_url": "https://app.prolific.com/submissions/complete?cc=C0DE42",
    "crowd": {"tasks_per_worker": 4},
}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return init_db(f"sqlite:///{tmp_path / 'studies.sqlite'}")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rating_row(context_id: str, text: str, system: str = "retrieval", **extra) -> dict:
    return {
        "context_id": context_id,
        "context": CONTEXT,
        "system_a": system,
        "response_a": text,
        **extra,
    }


def study_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}), encoding="utf-8")
    return path


def shown_text(engine: Engine, campaign: str, annotator: str) -> list[str]:
    who = create_annotator(engine, annotator)[0]
    assign_tasks(engine, campaign, annotators=[who.id])
    return [
        load_task(engine, e.assignment_id, who.id).response_a.text
        for e in queue(engine, who.id, campaign)
    ]


# --- defect 1: contexts from different imports collide ------------------------------------------


def test_two_files_reusing_a_context_id_each_show_their_own_text(engine, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [rating_row("1", "First study's reply.")])
    second_rows = [
        {**rating_row("1", "Second study's reply."), "context": "User: A different dialogue."}
    ]
    second = write_jsonl(tmp_path / "b.jsonl", second_rows)
    import_task_file(engine, first, "one")
    assert import_task_file(engine, second, "two") == (1, 1)
    assert shown_text(engine, "one", "ann1") == ["First study's reply."]
    assert shown_text(engine, "two", "ann2") == ["Second study's reply."]
    with session_scope(engine, write=False) as session:
        task = session.scalars(select(Task).where(Task.campaign.has(name="two"))).one()
        assert task.context.dialogue["turns"][0]["text"] == "A different dialogue."


def test_corrected_text_under_an_existing_id_is_a_new_task_not_the_old_one(engine, tmp_path):
    import_task_file(
        engine, write_jsonl(tmp_path / "a.jsonl", [rating_row("1", "Typo here.")]), "s"
    )
    fixed = write_jsonl(tmp_path / "b.jsonl", [rating_row("1", "No typo here.")])
    assert import_task_file(engine, fixed, "s") == (1, 1)  # was "0 new": silently ignored
    assert sorted(shown_text(engine, "s", "ann")) == ["No typo here.", "Typo here."]


# --- defect 2: a failed import leaves debris ------------------------------------------------------


def test_a_bad_gold_answer_leaves_no_campaign_and_every_bad_row_is_listed(engine, tmp_path):
    rows = [
        rating_row("1", "Fine."),
        rating_row("2", "Bad gold.", gold={"fluency": 7}),
        rating_row("3", "Fine too."),
        rating_row("4", "Unknown criterion.", gold={"humour": 1}),
    ]
    with pytest.raises(TaskFileError) as caught:
        import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", rows), "new", "llm-redial")
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in caught.value.problems] == ["2", "4"]
    assert "fluency=7" in str(caught.value) and "'humour'" in str(caught.value)
    assert [c.name for c in list_campaigns(engine)] == []
    with session_scope(engine, write=False) as session:
        assert session.scalar(select(func.count()).select_from(Campaign)) == 0
        assert session.scalar(select(func.count()).select_from(Task)) == 0


def test_a_failure_while_writing_undoes_the_chunks_already_written(engine, tmp_path, monkeypatch):
    import db.tasks as tasks_module

    rows = [rating_row(str(k), f"Reply {k}.") for k in range(12)]
    real_store = tasks_module._store
    calls = {"n": 0}

    def store_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # the third chunk of four
            raise RuntimeError("disk full")
        return real_store(*args, **kwargs)

    monkeypatch.setattr(tasks_module, "_store", store_then_crash)
    monkeypatch.setattr(tasks_module, "IMPORT_CHUNK", 4)
    with pytest.raises(RuntimeError, match="disk full"):
        import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", rows), "crashy")
    with session_scope(engine, write=False) as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 0
        assert session.scalar(select(func.count()).select_from(Campaign)) == 0


def test_tasks_of_an_unfinished_import_are_not_assigned(engine, tmp_path):
    import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", [rating_row("1", "R.")]), "s")
    with session_scope(engine) as session:
        session.execute(update(TaskImport).values(status="running"))
    create_annotator(engine, "ann")
    assert assign_tasks(engine, "s") == 0


# --- defect 3: files as people have them ----------------------------------------------------------


def test_a_csv_with_a_byte_order_mark_imports(engine, tmp_path):
    path = tmp_path / "excel.csv"
    text = "context_id,context,system_a,response_a\r\n1,User: Hi there,retrieval,Try Heat.\r\n"
    path.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    assert import_task_file(engine, path, "s") == (1, 1)


def test_a_non_utf8_file_names_the_file_and_every_bad_line(engine, tmp_path):
    path = tmp_path / "latin1.csv"
    text = (
        "context_id,context,system_a,response_a\n"
        "1,User: Hi,retrieval,Caf\xe9 au lait.\n"
        "2,User: Hi,retrieval,Fine.\n"
        "3,User: Hi,retrieval,Cr\xe8me.\n"
    )
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(TaskFileError) as caught:
        import_task_file(engine, path, "s")
    assert caught.value.problems[0].startswith(f"{path}:2: not UTF-8")
    assert caught.value.problems[1].startswith(f"{path}:4: not UTF-8")
    assert "save the file as UTF-8" in caught.value.problems[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("response_a", ["a", "list"], "response_a must be text, not a list"),
        ("system_a", {"name": "x"}, "system_a must be text, not an object"),
        ("response_a", 42, "response_a must be text, not a number"),
        ("source", 3.5, "source must be text, not a number"),
    ],
)
def test_structured_values_in_text_fields_are_errors(engine, tmp_path, field, value, message):
    row = {**rating_row("1", "Reply."), field: value}
    with pytest.raises(TaskFileError, match=message):
        import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", [row]), "s")


def test_whole_numbers_are_fine_as_context_ids_and_versions(engine, tmp_path):
    row = {**rating_row(7, "Reply."), "version_a": 2}
    assert import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", [row]), "s") == (1, 1)


# --- campaign files -------------------------------------------------------------------------------


def test_a_campaign_file_defines_criteria_scales_and_settings(engine, tmp_path):
    campaign = create_campaign_from_file(engine, study_file(tmp_path))
    by_name = {c["name"]: c for c in campaign.criteria}
    assert by_name["fluency"]["scale"] == [1, 5] and by_name["fluency"]["labels"]["5"] == "Perfect"
    assert by_name["humour"]["required"] is False and by_name["humour"]["allow_na"] is True
    assert by_name["preference"]["scale"] == ["A", "B", "tie"]
    assert campaign.task_kinds == ["pairwise", "rating"]
    assert campaign.settings["onboarding"] == {"pass_required": 1}
    # The same file again is harmless; other criteria under the same name are refused.
    assert create_campaign_from_file(engine, study_file(tmp_path)).id == campaign.id
    changed = dict(STUDY["criteria"][0], scale=3, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="already exists with other criteria"):
        create_campaign_from_file(engine, study_file(tmp_path, criteria=[changed]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"criteria": []}, "criteria: List should have at least 1 item"),
        (
            {"criteria": [{"name": "f", "kind": "likert", "scale": 5, "labels": ["a"]}]},
            "give a label for every point 1..5",
        ),
        ({"criteria": [{"name": "f", "kind": "stars"}]}, "criteria.0.kind"),
        ({"overlap": 0}, "overlap: Input should be greater than or equal to 1"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_campaign_file_names_the_field(tmp_path, change, message):
    with pytest.raises(CampaignFileError, match=message) as caught:
        load_spec(study_file(tmp_path, **change))
    assert str(caught.value).startswith(str(tmp_path / "study.yaml"))


def test_optional_criteria_may_be_left_out_and_na_is_an_answer(engine, tmp_path):
    create_campaign_from_file(engine, study_file(tmp_path, onboarding=None))
    import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", [rating_row("1", "R.")]), "study")
    who = create_annotator(engine, "ann")[0]
    assign_tasks(engine, "study")
    (entry,) = queue(engine, who.id, "study")
    assert submit(engine, entry.assignment_id, who.id, {"fluency": 4, "relevance": 2}) == (
        "submitted"
    )
    answers = {"fluency": 4, "relevance": 2, "humour": "n/a"}
    assert submit(engine, entry.assignment_id, who.id, answers) == "edited"
    with pytest.raises(ValueError, match="'relevance' has no answer"):
        submit(engine, entry.assignment_id, who.id, {"fluency": 4})
    with pytest.raises(ValueError, match="'fluency': 'n/a' is not on its scale"):
        submit(engine, entry.assignment_id, who.id, {"fluency": "n/a", "relevance": 2})
    frame = judgments_frame(engine, "study")
    assert sorted(frame["criterion"]) == ["fluency", "relevance"]
    assert frame.attrs["dropped"]["not_applicable"] == 1


# --- onboarding -----------------------------------------------------------------------------------


def onboarding_study(engine: Engine, tmp_path: Path, n_real: int = 3) -> None:
    create_campaign_from_file(engine, study_file(tmp_path))
    rows = [
        rating_row(
            "p1",
            "ATTENTION: a fluent, relevant reply.",
            system="practice",
            stage="onboarding",
            gold={"fluency": 5},
            feedback="The reply is flawless English.",
        ),
        *[rating_row(f"r{k}", f"Real reply {k}.") for k in range(n_real)],
    ]
    import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", rows), "study")


def test_onboarding_comes_first_gives_feedback_and_gates_real_tasks(engine, tmp_path):
    onboarding_study(engine, tmp_path)
    who = create_annotator(engine, "ann")[0]
    assign_tasks(engine, "study")
    entries = queue(engine, who.id, "study")
    assert [e.stage for e in entries] == ["onboarding", "main", "main", "main"]
    with pytest.raises(PermissionError, match="pass the onboarding"):
        submit(engine, entries[1].assignment_id, who.id, {"fluency": 3, "relevance": 2})
    with pytest.raises(ValueError, match="cannot be skipped"):
        skip(engine, entries[0].assignment_id, who.id)

    submit(engine, entries[0].assignment_id, who.id, {"fluency": 5, "relevance": 3})
    view = load_task(engine, entries[0].assignment_id, who.id)
    assert view.result is not None and view.result.correct
    assert view.result.feedback == "The reply is flawless English."
    assert qualification(engine, who.id, "study").state == "passed"
    # The first answer counts: changing it later changes nothing.
    assert submit(engine, entries[0].assignment_id, who.id, {"fluency": 1, "relevance": 1}) == (
        "unchanged"
    )
    assert submit(engine, entries[1].assignment_id, who.id, {"fluency": 3, "relevance": 2})


def test_failing_onboarding_blocks_and_gives_the_real_tasks_back(engine, tmp_path):
    onboarding_study(engine, tmp_path)
    who = create_annotator(engine, "ann")[0]
    assign_tasks(engine, "study")
    first = queue(engine, who.id, "study")[0]
    submit(engine, first.assignment_id, who.id, {"fluency": 2, "relevance": 3})
    view = load_task(engine, first.assignment_id, who.id)
    assert view.result is not None and not view.result.correct
    assert view.result.expected == {"fluency": 5} and view.result.given["fluency"] == 2
    assert qualification(engine, who.id, "study").state == "failed"
    assert [e.stage for e in queue(engine, who.id, "study")] == ["onboarding"]
    other = create_annotator(engine, "other")[0]
    assign_tasks(engine, "study")
    assert len(queue(engine, other.id, "study")) == 4  # the released tasks went to someone else


def test_a_campaign_without_enough_onboarding_tasks_is_not_handed_out(engine, tmp_path):
    create_campaign_from_file(engine, study_file(tmp_path))
    import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", [rating_row("1", "R.")]), "study")
    create_annotator(engine, "ann")
    with pytest.raises(ValueError, match="requires passing 1 onboarding task"):
        assign_tasks(engine, "study")


# --- order ----------------------------------------------------------------------------------------


def test_order_is_seeded_per_annotator_with_checks_interleaved_and_contexts_apart(engine, tmp_path):
    create_campaign_from_file(engine, study_file(tmp_path, onboarding=None, overlap=3))
    rows = []
    for c in range(6):  # three systems per context, stored context by context
        rows += [rating_row(f"c{c}", f"Reply {c}{s}.", system=s) for s in ("x", "y", "z")]
    rows += [
        rating_row(f"check{k}", f"ATTENTION {k}", system="check", gold={"fluency": 1})
        for k in range(3)
    ]
    import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", rows), "study")
    people = [create_annotator(engine, n)[0] for n in ("a", "b", "c")]
    assign_tasks(engine, "study")
    orders = []
    for who in people:
        entries = queue(engine, who.id, "study")
        texts = [load_task(engine, e.assignment_id, who.id).response_a.text for e in entries]
        orders.append(texts)
        assert len(texts) == 21
        # "Reply 3y." belongs to context 3; no two tasks of one context come back to back.
        contexts = [t[6] if t.startswith("Reply") else t for t in texts]
        assert all(a != b for a, b in zip(contexts, contexts[1:], strict=False))
        checks = [k for k, t in enumerate(texts) if t.startswith("ATTENTION")]
        assert checks != [18, 19, 20]  # not all last, as they used to be
    assert len({tuple(o) for o in orders}) == 3  # each annotator has an order of their own
    with session_scope(engine, write=False) as session:
        recorded = session.scalars(select(Assignment.queue_order)).all()
    assert Counter(recorded) == Counter(list(range(21)) * 3)


# --- crowd links and completion -------------------------------------------------------------------


def test_a_prolific_link_creates_then_resumes_a_worker_with_a_batch(engine, tmp_path):
    onboarding_study(engine, tmp_path, n_real=8)
    params = {"campaign": "study", "PROLIFIC_PID": "5f1c0ffee", "STUDY_ID": "s1", "SESSION_ID": "x"}
    visit = parse_link(params)
    worker = crowd_annotator(engine, visit)
    assert worker.name == "prolific:5f1c0ffee"
    stages = Counter(e.stage for e in queue(engine, worker.id, "study"))
    assert stages == {"onboarding": 1, "main": 4}  # tasks_per_worker = 4
    assert crowd_annotator(engine, visit).id == worker.id  # a second visit resumes
    with session_scope(engine, write=False) as session:
        visits = session.scalars(select(Event.payload).where(Event.kind == "crowd-visit")).all()
    assert [v["study_id"] for v in visits] == ["s1", "s1"]
    done = completion(engine, "study")
    assert done is not None and done.code == "C0DE42" and done.url.endswith("cc=C0DE42")


def test_crowd_links_are_refused_where_the_campaign_takes_none(engine, tmp_path):
    create_campaign_from_file(engine, study_file(tmp_path, crowd=None, onboarding=None))
    with pytest.raises(CrowdLinkError, match="does not take sign-ups"):
        crowd_annotator(engine, parse_link({"campaign": "study", "PROLIFIC_PID": "abc"}))
    with pytest.raises(CrowdLinkError, match="incomplete"):
        parse_link({"PROLIFIC_PID": "abc"})
    with pytest.raises(CrowdLinkError, match="invalid worker id"):
        parse_link({"campaign": "study", "worker": "<script>"})
    assert parse_link({"token": "abc"}) is None


# --- time on task ---------------------------------------------------------------------------------


def test_time_on_task_comes_from_open_and_submit_and_flags_fast_judgments(engine, tmp_path):
    create_campaign_from_file(engine, study_file(tmp_path, onboarding=None))
    rows = [rating_row("1", "Slow."), rating_row("2", "Fast.", system="other")]
    import_task_file(engine, write_jsonl(tmp_path / "t.jsonl", rows), "study")
    who = create_annotator(engine, "ann")[0]
    assign_tasks(engine, "study")
    for entry in queue(engine, who.id, "study"):
        log_open(engine, entry.assignment_id, who.id)
        submit(engine, entry.assignment_id, who.id, {"fluency": 4, "relevance": 2})
    # Move the slow task's "opened" event 30 s into the past.
    slow = next(
        e
        for e in queue(engine, who.id, "study")
        if load_task(engine, e.assignment_id, who.id).response_a.text == "Slow."
    )
    with session_scope(engine) as session:
        event = session.scalars(
            select(Event).where(Event.assignment_id == slow.assignment_id, Event.kind == "opened")
        ).one()
        event.at = event.at - timedelta(seconds=30)
    frame = judgments_frame(engine, "study")
    by_text = frame.groupby("system")["seconds"].first()
    assert by_text["retrieval"] == pytest.approx(30, abs=2) and by_text["other"] < 2
    assert frame.groupby("system")["too_fast"].all().to_dict() == {
        "other": True,
        "retrieval": False,
    }
    summary = time_summary(frame)
    assert set(summary["by"]) == {"annotator", "system"}
    assert summary.loc[summary["name"] == "ann", "too_fast"].item() == 1
