"""The annotator's page: pick a campaign, read the guidelines, work through the queue.

Where an annotator stands comes from the database (``db.annotation.queue``): reopening the link
resumes at the first pending task. The Streamlit session keeps only what is on screen: the
campaign picked, the task being viewed after Back/Next, and which task's "opened" event was
logged (so a rerun caused by clicking a radio button does not log it twice).
"""

from __future__ import annotations

from contextlib import suppress
from functools import partial
from typing import Any

import streamlit as st
from sqlalchemy import Engine

from annotation import display
from db import annotation as ann
from db.campaigns import NA_LABEL, NOT_APPLICABLE
from db.crowd import completion
from db.schema import Annotator

CURRENT = "current_assignment"  # assignment being viewed; None = the first pending one
OPENED = "opened_assignment"
READ_GUIDELINES = "read_guidelines"  # campaigns whose guidelines were dismissed this session

SIDE_TEXT = {"left": "◀ Left is better", "right": "Right is better ▶", "tie": "Tie"}


def page(engine: Engine, annotator: Annotator) -> None:
    """The whole annotator page for ``annotator`` (already authenticated)."""
    campaigns = ann.annotator_campaigns(engine, annotator.id)
    if not campaigns:
        st.info("You have no tasks yet. The study's organisers will assign some to you.")
        return
    names = [c.name for c in campaigns]
    # The picker appears only when there is a choice to make.
    chosen = st.sidebar.selectbox("Campaign", names, key="campaign") if len(names) > 1 else names[0]
    campaign = next(c for c in campaigns if c.name == chosen)

    entries = ann.queue(engine, annotator.id, campaign.id)
    counts = ann.progress_of(entries)
    st.title(display.plain(campaign.name))
    finished = counts.done + counts.skipped
    st.progress(
        finished / counts.total,
        text=f"{counts.done} done · {counts.skipped} skipped · {counts.total} tasks",
    )

    first_visit = finished == 0 and campaign.id not in st.session_state.get(READ_GUIDELINES, set())
    if first_visit:
        st.subheader("Before you start")
        display.guidelines(campaign.guidelines, campaign.criteria)
        # A callback, not st.rerun(): the task page is drawn by the click's own run.
        st.button(
            "Start",
            type="primary",
            shortcut="Ctrl+Enter",
            on_click=_read_guidelines,
            args=(campaign.id,),
        )
        return
    with st.expander("Guidelines and rating scales"):
        display.guidelines(campaign.guidelines, campaign.criteria)

    status = ann.qualification(engine, annotator.id, campaign.id)
    if status.state == "failed":
        st.error(
            f"Thank you for trying the practice tasks. You answered {status.correct} of "
            f"{status.total} as expected and {status.required} were needed, so this study "
            "cannot continue with you. Your practice answers are kept; nothing else is needed."
        )
        return
    current = st.session_state.get(CURRENT)
    if current not in {e.assignment_id for e in entries}:  # never viewed, or another campaign's
        pending = next((e for e in entries if e.status == "pending"), None)
        current = pending.assignment_id if pending else None
    if current is None:
        _finished(engine, campaign.id, entries)
        return
    _task(engine, annotator, entries, current, status)


def _read_guidelines(campaign_id: int) -> None:
    st.session_state[READ_GUIDELINES] = {*st.session_state.get(READ_GUIDELINES, set()), campaign_id}


def _go(assignment_id: int | None) -> None:
    st.session_state[CURRENT] = assignment_id
    st.rerun()


def _finished(engine: Engine, campaign_id: int, entries: list[ann.QueueEntry]) -> None:
    skipped = ann.progress_of(entries).skipped
    st.success(
        "All tasks are done. Thank you! "
        + (f"{skipped} skipped tasks can still be answered: " if skipped else "")
        + "go Back to review or change an answer."
    )
    done = completion(engine, campaign_id)
    if done is not None and done.code:
        st.markdown("Your completion code:")
        st.code(done.code, language=None)
    if done is not None and done.url:
        st.link_button("Return to the study platform", done.url, type="primary")
        if not skipped:
            display.redirect(done.url, delay_s=5)
            st.caption("You will be taken back to the study platform in a few seconds.")
    last = ann.previous_entry(entries, None)
    if last is not None and st.button("◀ Back", shortcut="Alt+B"):
        _go(last.assignment_id)


def _task(
    engine: Engine,
    annotator: Annotator,
    entries: list[ann.QueueEntry],
    assignment_id: int,
    qualification: ann.Qualification,
) -> None:
    view = ann.load_task(engine, assignment_id, annotator.id)
    entry = next(e for e in entries if e.assignment_id == assignment_id)
    if st.session_state.get(OPENED) != assignment_id:
        with suppress(ann.DatabaseBusy):  # only time on task is lost; the annotator works on
            ann.log_open(engine, assignment_id, annotator.id)
        st.session_state[OPENED] = assignment_id
        display.scroll_to_top(assignment_id)  # a new task starts at its top, not mid-page

    onboarding = view.stage == "onboarding"
    status = {"done": "answered — you can change your answer", "skipped": "skipped"}
    if onboarding:
        status["done"] = "answered"
    note = f" ({status[view.status]})" if view.status in status else ""
    if onboarding:
        practice = [e for e in entries if e.stage == "onboarding"]
        st.subheader(f"Practice task {practice.index(entry) + 1} of {len(practice)}{note}")
        st.info(
            f"Practice tasks come first: answer {qualification.required} of {qualification.total} "
            "as expected to start the study. You will see the expected answer after each one."
        )
    else:
        st.subheader(f"Task {entry.number} of {len(entries)}{note}")
    display.dialogue(view.turns)
    if view.kind == "pairwise":
        left, right = view.sides()
        columns = st.columns(2)
        for column, shown, heading in zip(columns, (left, right), ("Left", "Right"), strict=True):
            with column:
                display.response(shown, heading)
    else:
        display.response(view.response_a, "Response")

    if view.result is not None:
        _feedback(view)
        _onboarding_buttons(entries, view)
        return
    answers = _controls(view)
    reason = None
    if view.kind == "pairwise":
        reason = st.text_area(
            "Why? (optional)", value=view.reason or "", key=f"reason-{assignment_id}"
        )
    missing = [
        c["name"] for c in view.criteria if answers[c["name"]] is None and c.get("required", True)
    ]
    _buttons(engine, annotator, entries, view, answers, reason, missing)


def _feedback(view: ann.TaskView) -> None:
    """An answered practice task: right or wrong, the expected answers and the explanation."""
    result = view.result
    assert result is not None
    by_name = {c["name"]: c for c in view.criteria}
    lines = []
    for name, expected in result.expected.items():
        criterion = by_name[name]
        given = result.given.get(name)
        verdict = "right" if given == expected else "not as expected"
        lines.append(
            f"- {display.criterion_title(criterion)}: expected "
            f"**{_answer_text(criterion, expected, view.left_is_a)}**, you answered "
            f"**{_answer_text(criterion, given, view.left_is_a)}** ({verdict})"
        )
    box = st.success if result.correct else st.warning
    box(("Correct!" if result.correct else "Not quite.") + "\n\n" + "\n".join(lines))
    if result.feedback:
        st.markdown("**Why:** " + display.plain(result.feedback))


def _answer_text(criterion: dict[str, Any], value: Any, left_is_a: bool) -> str:
    if value is None:
        return "nothing"
    if value == NOT_APPLICABLE:
        return display.plain(NA_LABEL)
    if criterion["kind"] == "pairwise":
        return SIDE_TEXT[ann.choice_to_screen(str(value), left_is_a)]
    return display.scale_option(criterion, value)


def _onboarding_buttons(entries: list[ann.QueueEntry], view: ann.TaskView) -> None:
    back, forward = st.columns([1, 3])
    previous = ann.previous_entry(entries, view.assignment_id)
    if back.button("◀ Back", disabled=previous is None, shortcut="Alt+B") and previous:
        _go(previous.assignment_id)
    if forward.button("Continue ▶", type="primary", shortcut="Ctrl+Enter"):
        _go(None)


def _controls(view: ann.TaskView) -> dict[str, Any]:
    """One control per criterion, empty until the annotator clicks (or pre-filled on an edit).

    Pairwise controls show screen sides; the answers are returned in A/B terms.
    """
    answers: dict[str, Any] = {}
    for criterion in view.criteria:
        name = criterion["name"]
        previous = view.answers.get(name)
        options: list[Any]
        if criterion["kind"] == "pairwise":
            options = list(SIDE_TEXT)
            label = partial(_side_text, criterion)
            if previous not in (None, NOT_APPLICABLE):
                previous = ann.choice_to_screen(str(previous), view.left_is_a)
        else:
            options = ann.scale_values(criterion)
            label = partial(display.scale_option, criterion)
        if criterion.get("allow_na"):
            options = [*options, NOT_APPLICABLE]
            label = partial(_with_na, label)
        choice = st.radio(
            display.criterion_question(criterion),
            options,
            # index=None: no default, so nothing is recorded that the annotator did not click.
            index=options.index(previous) if previous in options else None,
            format_func=label,
            key=f"answer-{view.assignment_id}-{name}",
            horizontal=True,
            help=display.plain(str(criterion.get("rubric", ""))) or None,
        )
        if criterion["kind"] == "pairwise" and choice not in (None, NOT_APPLICABLE):
            choice = ann.screen_to_choice(choice, view.left_is_a)
        answers[name] = choice
    return answers


def _with_na(label: Any, value: Any) -> str:
    return display.plain(NA_LABEL) if value == NOT_APPLICABLE else label(value)


def _side_text(criterion: dict[str, Any], side: str) -> str:
    tie = ann.scale_label(criterion, "tie")
    if side == "tie" and tie:
        return f"{SIDE_TEXT[side]} ({display.plain(tie)})"
    return SIDE_TEXT[side]


def _buttons(
    engine: Engine,
    annotator: Annotator,
    entries: list[ann.QueueEntry],
    view: ann.TaskView,
    answers: dict[str, Any],
    reason: str | None,
    missing: list[str],
) -> None:
    editing = view.status == "done"
    back, forward, save = st.columns([1, 1, 2])
    previous = ann.previous_entry(entries, view.assignment_id)
    if back.button("◀ Back", disabled=previous is None, shortcut="Alt+B") and previous:
        _go(previous.assignment_id)
    if view.status == "pending" and view.stage == "onboarding":
        pass  # practice tasks qualify the annotator: no skipping
    elif view.status == "pending":
        if forward.button("Skip", shortcut="Alt+S"):
            ann.skip(engine, view.assignment_id, annotator.id)
            _go(None)
    else:
        ids = [e.assignment_id for e in entries]
        following = ids[ids.index(view.assignment_id) + 1 :]
        if forward.button("Next ▶", shortcut="Alt+N"):
            _go(following[0] if following else None)
    label = "Save changes" if editing else "Submit"
    if save.button(label, type="primary", disabled=bool(missing), shortcut="Ctrl+Enter"):
        try:
            outcome = ann.submit(engine, view.assignment_id, annotator.id, answers, reason)
        except ann.DatabaseBusy as busy:
            st.error(str(busy))  # the answers stay selected above
            return
        st.toast({"submitted": "Saved", "edited": "Changes saved"}.get(outcome, "No changes"))
        # A practice task stays on screen to show its feedback.
        _go(view.assignment_id if view.stage == "onboarding" else None)
    if missing:
        st.caption(
            "Answer every required question to submit: " + ", ".join(map(display.plain, missing))
        )
