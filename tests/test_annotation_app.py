"""The Streamlit annotation app in process (streamlit.testing AppTest) on a temporary SQLite file.

Each test drives the app as a person would: open the link, read, click, submit; and checks both
what is on screen and what landed in the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from db.annotation import (
    assign_tasks,
    authenticate,
    choice_to_screen,
    create_annotator,
    load_task,
    queue,
)
from db.schema import Annotator, Event, Judgment
from db.session import get_engine, init_db, session_scope
from tests.test_annotation import build_campaign

APP = Path(__file__).resolve().parents[1] / "annotation" / "app.py"


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """One annotator with 1 rating task, 1 pairwise task and 1 attention check, and an admin."""
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    monkeypatch.setenv("CRS_DB_URL", url)
    monkeypatch.setenv("CRS_ANNOTATE_URL", "https://annotate.example.org")
    engine = init_db(url)
    build_campaign(engine, ratings=1, pairs=1, gold=1)
    annotator, token = create_annotator(engine, "ann")
    _, admin_token = create_annotator(engine, "boss", role="admin")
    assign_tasks(engine, "study")
    yield {"engine": engine, "id": annotator.id, "token": token, "admin": admin_token}
    get_engine(url).dispose()


def open_app(token: str | None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    if token is not None:
        at.query_params["token"] = token
    return at.run()


def rendered(at: AppTest) -> str:
    """Every element's content (its protobuf as text), sidebar and nested blocks included."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        for child in getattr(node, "children", {}).values():
            walk(child)
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))

    walk(at._tree)
    return "\n".join(parts)


def radio(at: AppTest, label: str) -> Any:
    return next(r for r in at.radio if r.label == label)


def button(at: AppTest, label: str) -> Any:
    return next(b for b in at.button if b.label == label)


def start(at: AppTest) -> AppTest:
    """Dismiss the guidelines shown before the first task."""
    assert [s.value for s in at.subheader] == ["Before you start"]
    assert "Perfectly fluent" in rendered(at)  # each scale point's label
    return button(at, "Start").click().run()


def judgments(engine: Engine) -> list[tuple[str, int, int | None, str | None, str | None]]:
    with session_scope(engine, write=False) as session:
        return session.execute(
            select(
                Judgment.criterion,
                Judgment.revision,
                Judgment.rating,
                Judgment.choice,
                Judgment.reason,
            ).order_by(Judgment.id)
        ).all()


def events(engine: Engine) -> list[str]:
    with session_scope(engine, write=False) as session:
        return list(session.scalars(select(Event.kind).order_by(Event.id)))


@pytest.mark.parametrize("token", [None, "", "not-a-real-token"])
def test_a_missing_or_wrong_token_sees_nothing(study: dict[str, Any], token: str | None) -> None:
    at = open_app(token)
    assert not at.exception
    assert "link is not valid" in at.error[0].value
    page = rendered(at)
    for secret in ("context study", "reply study", "How to judge", "Fluency", "ann", "boss"):
        assert secret not in page
    assert not at.radio and not at.button and not at.dataframe


def test_rating_then_pairwise_task_are_stored_in_a_b_terms(study: dict[str, Any]) -> None:
    engine, me = study["engine"], study["id"]
    at = start(open_app(study["token"]))
    assert not at.exception
    assert at.subheader[0].value == "Task 1 of 3"
    assert len(at.chat_message) == 3
    page = rendered(at)
    assert "context study 0" in page and "reply study 0A" in page and "The Usual Suspects" in page
    # No default answer; Submit stays disabled until every criterion is answered.
    assert [r.value for r in at.radio] == [None, None]
    assert button(at, "Submit").disabled
    radio(at, "Fluency").set_value(4).run()
    assert button(at, "Submit").disabled
    radio(at, "Relevance").set_value(2).run()
    button(at, "Submit").click().run()
    assert judgments(engine) == [("fluency", 0, 4, None, None), ("relevance", 0, 2, None, None)]

    assert at.subheader[0].value == "Task 2 of 3"
    pair = queue(engine, me, "study")[1].assignment_id
    view = load_task(engine, pair, me)
    headings = [m.value for m in at.markdown if m.value in ("**Left**", "**Right**")]
    assert headings == ["**Left**", "**Right**"]
    left_text = "reply study 1A" if view.left_is_a else "reply study 1B"
    page = rendered(at)
    assert page.index(left_text) < page.index(
        "reply study 1B" if view.left_is_a else "reply study 1A"
    )
    overall = radio(at, "Overall")
    assert overall.value is None and overall.options[:2] == [
        "◀ Left is better",
        "Right is better ▶",
    ]
    overall.set_value("left").run()
    at.text_area[0].input("it names real films").run()
    button(at, "Submit").click().run()
    expected = "A" if view.left_is_a else "B"
    assert judgments(engine)[-1] == ("overall", 0, None, expected, "it names real films")
    assert at.subheader[0].value == "Task 3 of 3"
    assert events(engine) == ["opened", "submitted", "opened", "submitted", "opened"]


def test_back_prefills_the_latest_answers_and_saving_logs_an_edit(study: dict[str, Any]) -> None:
    engine = study["engine"]
    at = start(open_app(study["token"]))
    radio(at, "Fluency").set_value(4).run()
    radio(at, "Relevance").set_value(2).run()
    button(at, "Submit").click().run()
    assert at.subheader[0].value == "Task 2 of 3"

    button(at, "◀ Back").click().run()
    assert at.subheader[0].value.startswith("Task 1 of 3 (answered")
    assert [radio(at, "Fluency").value, radio(at, "Relevance").value] == [4, 2]
    assert button(at, "Save changes").disabled is False
    radio(at, "Fluency").set_value(2).run()
    button(at, "Save changes").click().run()
    assert at.subheader[0].value == "Task 2 of 3"  # back where the annotator left off
    assert judgments(engine)[-1] == ("fluency", 1, 2, None, None)
    assert "edited" in events(engine)


def test_reopening_the_link_resumes_at_the_first_pending_task(study: dict[str, Any]) -> None:
    at = start(open_app(study["token"]))
    radio(at, "Fluency").set_value(3).run()
    radio(at, "Relevance").set_value(1).run()
    button(at, "Submit").click().run()
    button(at, "Skip").click().run()
    assert at.subheader[0].value == "Task 3 of 3"

    again = open_app(study["token"])  # a new browser session: state comes from the database
    assert not again.exception
    assert again.subheader[0].value == "Task 3 of 3"  # no guidelines page: work has started
    assert "1 done · 1 skipped · 3 tasks" in rendered(again)
    button(again, "◀ Back").click().run()
    assert again.subheader[0].value == "Task 2 of 3 (skipped)"
    assert radio(again, "Overall").value is None


def test_admin_sees_attention_checks_and_progress_and_can_exclude(study: dict[str, Any]) -> None:
    engine, me = study["engine"], study["id"]
    at = start(open_app(study["token"]))
    radio(at, "Fluency").set_value(5).run()
    radio(at, "Relevance").set_value(2).run()
    button(at, "Submit").click().run()
    button(at, "Skip").click().run()
    # The attention check expects response A; answer the side where B is shown.
    check = queue(engine, me, "study")[2].assignment_id
    wrong_side = choice_to_screen("B", load_task(engine, check, me).left_is_a)
    radio(at, "Overall").set_value(wrong_side).run()
    button(at, "Submit").click().run()
    assert "All tasks are done" in at.success[0].value

    admin = open_app(study["admin"])
    assert not admin.exception
    assert admin.title[0].value == "Annotation admin"
    page = rendered(admin)
    assert "ann: 0 of 1 passed (0%)" in "\n".join(m.value for m in admin.markdown)
    progress = admin.dataframe[1].value
    assert progress.to_dict("records") == [
        {"annotator": "ann", "done": 2, "skipped": 1, "pending": 0, "total": 3, "excluded": False}
    ]
    assert "context study" not in page  # the admin pages show no task content

    admin.toggle(key="exclude-ann").set_value(True).run()
    with session_scope(engine, write=False) as session:
        assert session.scalars(select(Annotator.excluded).where(Annotator.name == "ann")).one()

    # A new annotator's link opens the app as them.
    admin.text_input[0].input("newcomer")
    admin.button(key="FormSubmitter:new_annotator-Create").click().run()
    link = admin.code[0].value
    assert link.startswith("https://annotate.example.org/?token=")
    assert authenticate(engine, link.split("token=", 1)[1]).name == "newcomer"


def test_database_text_is_shown_literally_not_as_markup() -> None:
    from annotation.display import plain

    hostile = "<img src=x onerror=alert(1)> ![pixel](http://evil.example/p.png) :red[alarm] $x$"
    escaped = plain(hostile)
    for markup in ("![", "](", ":red[", "$x$"):
        assert markup not in escaped
    assert "\\<img" in escaped  # HTML is escaped by Streamlit too (no unsafe_allow_html)
    assert escaped.replace("\\", "") == hostile
    assert "unsafe_allow_html=True" not in "".join(p.read_text() for p in APP.parent.glob("*.py"))


def test_an_annotator_in_two_campaigns_picks_one(study: dict[str, Any]) -> None:
    engine = study["engine"]
    build_campaign(engine, "second", ratings=1, pairs=0)
    assign_tasks(engine, "second")
    at = start(open_app(study["token"]))
    picker = at.sidebar.selectbox(key="campaign")
    assert picker.options == ["study", "second"]
    assert "context study 0" in rendered(at)
    picker.set_value("second").run()
    assert at.title[0].value == "second"
    at = start(at)  # each campaign has its own guidelines
    assert at.subheader[0].value == "Task 1 of 1" and "context second 0" in rendered(at)


def test_launch_runs_streamlit_on_the_app_with_the_database_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    from annotation import launch

    calls: list[tuple[list[str], dict[str, str]]] = []

    class FakeChild:
        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            calls.append((command, env))

        def wait(self) -> int:
            return 0

    monkeypatch.delenv("CRS_ANNOTATE_URL", raising=False)
    monkeypatch.setattr(launch.subprocess, "Popen", FakeChild)
    launch.launch("sqlite:////tmp/x.sqlite", 8502, "0.0.0.0")
    command, env = calls[0]
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4] == str(APP)
    assert command[command.index("--server.port") + 1] == "8502"
    assert env["CRS_DB_URL"] == "sqlite:////tmp/x.sqlite"
    assert env["CRS_ANNOTATE_URL"] == "http://localhost:8502"
