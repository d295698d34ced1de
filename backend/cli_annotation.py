"""`crs campaigns …`, `crs tasks …`, `crs annotators …`, `crs annotate`, `crs export`: human
evaluation from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from backend.cli_common import DataDirOpt, DatasetArg, console, fail, load_or_fail, model_or_fail

campaigns_app = typer.Typer(help="Annotation campaigns: define a study from a file, list them.")
tasks_app = typer.Typer(help="Annotation tasks: create from models, import from files, assign.")
annotators_app = typer.Typer(help="Annotators and their personal links.")

DbOpt = Annotated[
    str | None,
    typer.Option("--db-url", help="Database (default CRS_DB_URL or SQLite in CRS_HOME)."),
]
CampaignOpt = Annotated[str, typer.Option("--campaign", "-c", help="Campaign name.")]
TemplateOpt = Annotated[
    str,
    typer.Option(
        help="Built-in protocol for a new campaign: presales, llm-redial, pecrs, arena or crs-arena."
    ),
]


def _engine(db_url: str | None):
    from db.session import init_db

    return init_db(db_url)


def _predictions(specs: list[str] | None) -> dict[str, dict[tuple[str, int], dict]]:
    """``SYSTEM=FILE.jsonl`` options (files from `crs eval --predictions`) -> rows by (dialogue, turn)."""
    loaded = {}
    for spec in specs or []:
        system, sep, path = spec.partition("=")
        if not sep:
            raise typer.BadParameter(f"--outputs expects SYSTEM=FILE.jsonl, got {spec!r}")
        rows = {}
        with Path(path).open() as f:
            for line, text in enumerate(f, start=1):
                try:
                    row = json.loads(text)
                    rows[(str(row["dialogue_id"]), int(row["turn"]))] = row
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    fail(f"{path}:{line}: not a `crs eval --predictions` row ({err})")
        loaded[system] = rows
    return loaded


@tasks_app.command("create")
def tasks_create(
    campaign: CampaignOpt,
    systems: Annotated[
        str,
        typer.Option(
            help="Comma-separated registered models; `human` is the dataset's real response."
        ),
    ],
    dataset: DatasetArg = "redial",
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="Split whose contexts are sampled.")] = "test",
    n: Annotated[int, typer.Option(help="Contexts to sample.")] = 100,
    template: TemplateOpt = "presales",
    pairwise: Annotated[
        bool, typer.Option(help="Also create pairwise tasks (every pair of systems per context).")
    ] = False,
    overlap: Annotated[int | None, typer.Option(help="Annotators per task.")] = None,
    attention_checks: Annotated[
        int, typer.Option(help="Instructed-response tasks with a known answer.")
    ] = 0,
    outputs: Annotated[
        list[str] | None,
        typer.Option(help="SYSTEM=FILE.jsonl: saved `crs eval --predictions` instead of running."),
    ] = None,
    all_turns: Annotated[
        bool, typer.Option(help="Sample any system turn, not only those that recommend items.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for sampling contexts.")] = 0,
    db_url: DbOpt = None,
) -> None:
    """Run SYSTEMS on N sampled contexts of a split and store rating and/or pairwise tasks."""
    from backend.types import ScoredItem
    from db.campaigns import create_campaign
    from db.tasks import (
        REFERENCE_SYSTEM,
        SystemResponse,
        add_tasks,
        records_from_outputs,
        reference_response,
        run_systems,
        sample_contexts,
    )
    from db.tasks import (
        attention_checks as make_checks,
    )

    names = [s.strip() for s in systems.split(",") if s.strip()]
    if len(set(names)) != len(names) or not names:
        fail(f"--systems {systems!r}: name each system once, comma-separated")
    saved = _predictions(outputs)
    engine = _engine(db_url)
    try:
        target = create_campaign(engine, campaign, template, overlap=overlap)
    except (KeyError, ValueError) as err:
        fail(err.args[0])
    kinds = [
        k
        for k in target.task_kinds
        if k == "rating" or pairwise or target.task_kinds == ["pairwise"]
    ]
    if pairwise and "pairwise" not in target.task_kinds:
        fail(
            f"campaign {campaign!r} ({target.template}) has no pairwise criteria; use --template pecrs or llm-redial"
        )
    if "pairwise" in kinds and len(names) < 2:
        fail("pairwise tasks need at least two systems")

    ds = load_or_fail(dataset, data_dir)
    try:
        dialogues = ds.split(split)
    except KeyError as err:
        fail(err.args[0])
    # Only contexts that every saved output answered.
    answered = set.intersection(*(set(rows) for rows in saved.values())) if saved else None
    try:
        contexts = sample_contexts(
            dialogues, n, seed, recommendation_turns_only=not all_turns, allowed=answered
        )
    except ValueError as err:
        fail(err)

    titles = {item.id: item.display_title for item in ds.catalog}
    models = {
        name: model_or_fail(name, ds, {})
        for name in names
        if name != REFERENCE_SYSTEM and name not in saved
    }
    answers = run_systems(models, contexts)
    for name, rows in saved.items():
        answers[name] = [
            SystemResponse(
                system=name,
                text=rows[(d.id, i)]["text"],
                items=[
                    ScoredItem(item_id=x, score=0.0, title=titles.get(x, x))
                    for x in rows[(d.id, i)].get("top10", [])[:5]
                ],
            )
            for d, i in contexts
        ]
    if REFERENCE_SYSTEM in names:
        answers[REFERENCE_SYSTEM] = [reference_response(d, i, titles) for d, i in contexts]
    ordered = {name: answers[name] for name in names}
    records = records_from_outputs(ds.name, contexts, ordered, kinds)
    records += make_checks(ds.name, contexts, target, attention_checks, kinds, seed)
    try:
        created = add_tasks(engine, campaign, records)
    except (LookupError, ValueError) as err:
        fail(err)
    console.print(
        f"campaign [bold]{campaign}[/bold] ({target.template}): {created} new task(s) from "
        f"{len(contexts)} contexts x {len(names)} systems ({', '.join(kinds)}), "
        f"{attention_checks} attention check(s)"
    )
    _assign_if_possible(engine, campaign)


@campaigns_app.command("create")
def campaigns_create(
    file: Annotated[Path, typer.Argument(help="A campaign file, .yaml or .json (schema: docs).")],
    name: Annotated[
        str | None, typer.Option(help="Campaign name (default: the file's `name`).")
    ] = None,
    db_url: DbOpt = None,
) -> None:
    """Create a campaign from a file: criteria, onboarding, order, completion code, crowd links."""
    from db.campaigns import create_campaign_from_file

    engine = _engine(db_url)
    try:
        campaign = create_campaign_from_file(engine, file, name)
    except ValueError as err:
        fail(err)
    criteria = ", ".join(f"{c['name']} ({c['kind']})" for c in campaign.criteria)
    console.print(
        f"campaign {campaign.name!r}: {criteria}; import its tasks with `crs tasks import`"
    )


@campaigns_app.command("list")
def campaigns_list(db_url: DbOpt = None) -> None:
    """Every campaign with its protocol and criteria."""
    from db.campaigns import list_campaigns

    for campaign in list_campaigns(_engine(db_url)):
        criteria = ", ".join(c["name"] for c in campaign.criteria)
        console.print(f"{campaign.name}  [{campaign.template}]  {criteria}", soft_wrap=True)


@tasks_app.command("import")
def tasks_import(
    file: Annotated[Path, typer.Argument(help="A .csv or .jsonl task file (schema: README).")],
    campaign: CampaignOpt,
    template: Annotated[
        str | None,
        typer.Option(
            help="Built-in protocol if the campaign is new (default presales); "
            "or define it first with `crs campaigns create FILE`."
        ),
    ] = None,
    overlap: Annotated[
        int | None, typer.Option(help="Annotators per task (new campaigns).")
    ] = None,
    db_url: DbOpt = None,
) -> None:
    """Import tasks from a file; every bad row is listed with its line and nothing is imported."""
    from db.tasks import import_task_file

    engine = _engine(db_url)
    try:
        read, created = import_task_file(engine, file, campaign, template, overlap)
    except (FileNotFoundError, KeyError, LookupError, ValueError) as err:
        fail(err.args[0] if isinstance(err, KeyError) else err)
    console.print(f"{file}: {read} task(s) read, {created} new in campaign {campaign!r}")
    _assign_if_possible(engine, campaign)


@tasks_app.command("assign")
def tasks_assign(campaign: CampaignOpt, db_url: DbOpt = None) -> None:
    """Give every task to `overlap` annotators (idempotent: tops up new tasks and annotators)."""
    engine = _engine(db_url)
    _assign_if_possible(engine, campaign, quiet=False)


def _assign_if_possible(engine, campaign: str, quiet: bool = True) -> None:
    from db.annotation import assign_tasks

    try:
        added = assign_tasks(engine, campaign)
    except (LookupError, ValueError) as err:
        if quiet:
            console.print(f"[yellow]not assigned yet:[/yellow] {err}")
            return
        fail(err)
    console.print(f"{added} new assignment(s) in campaign {campaign!r}")


@annotators_app.command("add")
def annotators_add(
    name: Annotated[str, typer.Argument(help="A unique name (shown to admins, used in exports).")],
    admin: Annotated[bool, typer.Option(help="Give access to the admin pages.")] = False,
    campaign: Annotated[
        str | None, typer.Option(help="Assign this campaign's tasks now (idempotent).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Base URL of the annotation app (default CRS_ANNOTATE_URL).")
    ] = None,
    db_url: DbOpt = None,
) -> None:
    """Create an annotator and print their personal link (the token is shown only once)."""
    from sqlalchemy.exc import IntegrityError

    from db.annotation import annotate_url, create_annotator

    engine = _engine(db_url)
    try:
        _, token = create_annotator(engine, name, role="admin" if admin else "annotator")
    except (IntegrityError, ValueError):
        fail(f"an annotator called {name!r} exists already; choose another name")
    console.print(f"{name}: {annotate_url(token, url)}", soft_wrap=True)
    if campaign:
        _assign_if_possible(engine, campaign, quiet=False)


def annotate(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 to expose).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the annotation app.")] = 8501,
    db_url: DbOpt = None,
) -> None:
    """Start the Streamlit annotation app (annotators open their personal links)."""
    from annotation.launch import launch

    launch(db_url=db_url, port=port, host=host)


def export(
    campaign: CampaignOpt,
    out: Annotated[Path, typer.Option(help="Folder for the exported files.")] = Path("export"),
    formats: Annotated[
        str, typer.Option("--format", help="Comma-separated: csv, json, parquet.")
    ] = "csv,json,parquet",
    include_excluded: Annotated[
        bool, typer.Option(help="Keep annotators excluded for failed attention checks.")
    ] = False,
    db_url: DbOpt = None,
) -> None:
    """Export a campaign's judgments, summaries, agreement, paper table and plots."""
    from db.export import export_campaign

    engine = _engine(db_url)
    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    try:
        paths = export_campaign(
            engine, campaign, out, formats=chosen, include_excluded=include_excluded
        )
    except (LookupError, ValueError) as err:
        fail(err.args[0])
    for path in paths:
        console.print(str(path))
