"""The admin pages: annotators and their links, task import, progress, attention checks, results.

Shown only to annotators with role "admin". Tables go through ``st.dataframe``, which displays
cell text as text, so names and answers from the database cannot inject markup.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from annotation import display
from db import annotation as ann
from db.campaigns import TEMPLATES, create_campaign_from_file, list_campaigns
from db.tasks import import_task_file


def page(engine: Engine) -> None:
    """All admin sections; the campaign sections work on the campaign picked at the top."""
    st.title("Annotation admin")
    annotators, define, imports, progress, checks, results = st.tabs(
        ["Annotators", "New campaign", "Import tasks", "Progress", "Attention checks", "Results"]
    )
    with annotators:
        _annotators(engine)
    with define:
        _define(engine)
    with imports:
        _import(engine)
    campaigns = [c.name for c in list_campaigns(engine)]
    if not campaigns:
        for tab in (progress, checks, results):
            tab.info("No campaigns yet: import tasks (tab above) or run `crs tasks create`.")
        return
    campaign = st.sidebar.selectbox("Campaign", campaigns, key="admin_campaign")
    with progress:
        _progress(engine, campaign)
    with checks:
        _attention(engine, campaign)
    with results:
        _results(engine, campaign)


def _annotators(engine: Engine) -> None:
    with st.form("new_annotator", clear_on_submit=True):
        st.markdown("**New annotator**")
        name = st.text_input("Name (a pseudonym is enough)")
        role = st.radio("Role", ann.ROLES, horizontal=True)
        created = st.form_submit_button("Create")
    if created:
        try:
            annotator, token = ann.create_annotator(engine, name, role)
        except ValueError as error:
            st.error(str(error))
        else:
            _show_link(annotator.name, token)

    people = ann.list_annotators(engine)
    if not people:
        return
    st.dataframe(
        pd.DataFrame(
            [
                {"name": a.name, "role": a.role, "excluded": a.excluded, "created": a.created_at}
                for a in people
            ]
        ),
        hide_index=True,
    )
    st.markdown("**Lost link?** A new link replaces the old one, which stops working.")
    who = st.selectbox("Annotator", [a.name for a in people], key="relink_name")
    if st.button("New link"):
        _show_link(who, ann.reset_token(engine, who))


def _define(engine: Engine) -> None:
    """Create a campaign from a campaign file (criteria, onboarding, completion; see README)."""
    with st.form("define_campaign", clear_on_submit=False):
        upload = st.file_uploader("Campaign file (.yaml or .json)", type=["yaml", "yml", "json"])
        name = st.text_input("Campaign name (empty: the file's name field)")
        submitted = st.form_submit_button("Create campaign")
    if not submitted:
        return
    if upload is None:
        st.error("Choose a campaign file.")
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        try:
            campaign = create_campaign_from_file(engine, path, name.strip() or None)
        except ValueError as error:
            st.error("No campaign was created.")
            st.text(str(error).replace(folder + "/", ""))
            return
    criteria = ", ".join(c["name"] for c in campaign.criteria)
    st.success(
        f"Campaign {display.plain(campaign.name)} is ready ({display.plain(criteria)}); "
        "import its tasks next."
    )


def _import(engine: Engine) -> None:
    """Upload a CSV / JSONL task file (schema in the README) into a new or existing campaign."""
    with st.form("import_tasks", clear_on_submit=False):
        upload = st.file_uploader("Task file (.csv or .jsonl)", type=["csv", "jsonl"])
        campaign = st.text_input("Campaign (new or existing)")
        template = st.selectbox("Protocol for a new campaign", list(TEMPLATES))
        overlap = st.number_input("Annotators per task (new campaign)", 1, 20, 3)
        submitted = st.form_submit_button("Import")
    if not submitted:
        return
    if upload is None or not campaign.strip():
        st.error("Choose a file and name the campaign.")
        return
    name = campaign.strip()
    # The protocol applies to a new campaign only; an existing one keeps its own.
    chosen = None if name in {c.name for c in list_campaigns(engine)} else template
    with tempfile.TemporaryDirectory() as folder:
        # The reader reports problems as file:line, so the file keeps its uploaded name.
        path = Path(folder) / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        try:
            read, created = import_task_file(engine, path, name, chosen, int(overlap))
        except (KeyError, LookupError, ValueError) as error:
            st.error("Nothing was imported.")
            st.text(str(error.args[0]).replace(folder + "/", ""))
            return
    try:
        assigned = f"{ann.assign_tasks(engine, name)} new assignment(s)"
    except ValueError as error:  # no annotators yet
        assigned = str(error)
    st.success(f"{read} task(s) read, {created} new in {display.plain(name)}; {assigned}.")


def _show_link(name: str, token: str) -> None:
    st.success(f"Personal link for {display.plain(name)} (shown once; send it to them):")
    st.code(ann.annotate_url(token), language=None)


def _progress(engine: Engine, campaign: str) -> None:
    if st.button("Assign tasks", help="Give unassigned tasks to annotators; safe to repeat"):
        try:
            added = ann.assign_tasks(engine, campaign)
        except ValueError as error:
            st.error(str(error))
        else:
            st.success(f"{added} new assignments.")
    rows = ann.campaign_progress(engine, campaign)
    if not rows:
        st.info("Nobody has tasks in this campaign yet: create annotators, then Assign tasks.")
        return
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "annotator": r.name,
                    "done": r.progress.done,
                    "skipped": r.progress.skipped,
                    "pending": r.progress.pending,
                    "total": r.progress.total,
                    "excluded": r.excluded,
                }
                for r in rows
            ]
        ),
        hide_index=True,
    )


def _attention(engine: Engine, campaign: str) -> None:
    rates = ann.attention_pass_rates(engine, campaign)
    if not rates:
        st.info("This campaign has no attention-check (gold) tasks.")
        return
    excluded = {a.name: a.excluded for a in ann.list_annotators(engine)}
    st.caption("Excluded annotators keep their judgments, but analyses leave them out.")
    for name, (passed, total) in rates.items():
        share = f"{passed / total:.0%}" if total else "–"
        left, right = st.columns([3, 1])
        left.markdown(f"{display.plain(name)}: {passed} of {total} passed ({share})")
        wanted = right.toggle("Excluded", value=excluded[name], key=f"exclude-{name}")
        if wanted != excluded[name]:
            ann.set_excluded(engine, name, wanted)


def _results(engine: Engine, campaign: str) -> None:
    # Imported here: the statistics stack (scipy, statsmodels) is only needed on this tab.
    from db import analysis

    frame = analysis.judgments_frame(engine, campaign)
    if frame.empty:
        st.info("No judgments yet.")
        return
    st.caption(
        f"{len(frame)} judgments (latest revisions; excluded annotators and checks left out)"
    )
    sections: list[tuple[str, Any]] = [
        ("Ratings", analysis.rating_summary),
        ("Pairwise comparisons", analysis.pairwise_summary),
        ("Agreement", analysis.agreement),
    ]
    for title, summarise in sections:
        table = summarise(frame)
        if not table.empty:
            st.subheader(title)
            st.dataframe(table, hide_index=True)
    per_annotator = analysis.annotator_agreement(frame)
    if per_annotator["n_shared"].gt(0).any():
        st.subheader("Agreement per annotator")
        st.caption(
            "Against the other annotators of the same tasks. alpha_delta is how much "
            "Krippendorff's alpha rises without the annotator: the one who disagrees most is first."
        )
        # Across criteria too: the largest rise in alpha first, then the lowest agreement.
        ranked = per_annotator.sort_values(
            ["alpha_delta", "agreement_with_others"], ascending=[False, True], na_position="last"
        )
        st.dataframe(ranked, hide_index=True)
    for name, figure in analysis.figures(frame).items():
        st.plotly_chart(figure, key=f"figure-{name}")
    if frame["rating"].notna().any():
        fmt = st.radio("Paper table", ["markdown", "latex"], horizontal=True, key="table_fmt")
        st.code(analysis.paper_table(frame, fmt), language=fmt)
