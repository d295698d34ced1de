"""Arena vote hygiene and per-turn records.

* ``arena_votes.source``: where a vote comes from ("arena", "crsarena-dial", "simulated");
* ``arena_votes.flags``: hygiene flags set when the vote was stored (e.g. "identity_leak");
* ``arena_votes.turn_stats``: per side and system turn, latency, length, items and their rates;
* an index on ``arena_votes.session_id`` for the per-voter daily cap and the voter check.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Existing votes were all cast in this demo and carry no flags.
    with op.batch_alter_table("arena_votes") as batch:
        batch.add_column(sa.Column("source", sa.String(40), nullable=False, server_default="arena"))
        batch.add_column(sa.Column("flags", JSON_VALUE, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("turn_stats", JSON_VALUE, nullable=True))
        batch.create_index("ix_arena_votes_session_id", ["session_id"])
    with op.batch_alter_table("arena_votes") as batch:
        batch.alter_column("source", server_default=None)
        batch.alter_column("flags", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("arena_votes") as batch:
        batch.drop_index("ix_arena_votes_session_id")
        batch.drop_column("turn_stats")
        batch.drop_column("flags")
        batch.drop_column("source")
