"""`crs arena import|export`: arena votes in and out of the CRSArena-Dial format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from backend.cli_common import console, fail

arena_app = typer.Typer(help="Arena votes: import and export CRSArena-Dial files.")

DbOpt = Annotated[
    str | None,
    typer.Option("--db-url", help="Database (default CRS_DB_URL or SQLite in CRS_HOME)."),
]


def open_db(db_url: str | None):
    from db.session import init_db

    return init_db(db_url)


@arena_app.command("import")
def arena_import(
    path: Annotated[
        Path, typer.Argument(help="CRSArena-Dial data/ directory (votes_*.csv, *.json).")
    ],
    db_url: DbOpt = None,
) -> None:
    """Import CRSArena-Dial votes and dialogues as blind arena votes (source crsarena-dial)."""
    from db.crsarena_dial import import_dial

    if not path.is_dir():
        fail(f"{path} is not a directory; give the data/ directory of CRSArena-Dial")
    try:
        reports = import_dial(open_db(db_url), path)
    except (FileNotFoundError, ValueError, KeyError) as err:
        fail(err)
    for setting, report in reports.items():
        console.print(
            f"{setting}: {report.imported} votes imported, {report.already_present} already "
            f"there, {len(report.skipped)} skipped"
        )
        for reason in report.skipped:
            console.print(f"  skipped {reason}", highlight=False)


@arena_app.command("export")
def arena_export(
    out: Annotated[Path, typer.Argument(help="Directory to write the two files into.")],
    setting: Annotated[
        str, typer.Option(help="File name part: votes_SETTING.csv, crs_arena_dial_SETTING.json.")
    ] = "arena",
    named: Annotated[bool, typer.Option(help="Also export named (not blind) rounds.")] = False,
    db_url: DbOpt = None,
) -> None:
    """Export stored arena votes and their dialogues in the CRSArena-Dial format."""
    from db.crsarena_dial import export_dial

    written, notes = export_dial(open_db(db_url), out, setting, blind_only=not named)
    for note in notes:
        console.print(f"  {note}", highlight=False)
    console.print(f"{written} votes written to {out}/votes_{setting}.csv")
