"""Alembic environment for CRS Arena.

``db.session.init_db`` runs it with its own connection in ``config.attributes["connection"]``;
the Alembic command line (``alembic -c db/alembic.ini ...``) runs it against ``sqlalchemy.url``
or, when that is empty, ``Settings().db_url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from db.schema import Base
from db.session import get_engine


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit(
            "offline (--sql) migrations are not supported; run them against a database"
        )
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = get_engine(context.config.get_main_option("sqlalchemy.url") or None)
    with engine.connect() as connection:
        run_migrations(connection)


main()
