"""Studies a researcher defines: content-keyed contexts, chunked imports, onboarding, crowd workers.

* contexts and responses are identified by their content too (``content_hash``);
* ``task_imports`` and ``tasks.import_id``: an import is written in chunks and assigned when done;
* ``campaigns.settings`` (onboarding, order, minimum time, completion code);
* ``tasks.stage`` / ``tasks.feedback`` (onboarding gold tasks), ``assignments.queue_order``;
* ``annotators.external_id`` (a crowd worker's platform id);
* ``judgments.choice`` may be "n/a" (a "can't judge" answer).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_DATETIME = sa.DateTime(timezone=True)


def _hash(*parts: Any) -> str:
    # A frozen copy of db.content.content_hash: history must not follow later code changes.
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load(value: Any) -> Any:
    # SQLite hands JSON columns back as text through a bare connection.
    return json.loads(value) if isinstance(value, str) else value


def upgrade() -> None:
    connection = op.get_bind()

    with op.batch_alter_table("contexts") as batch:
        batch.add_column(
            sa.Column("content_hash", sa.String(64), nullable=False, server_default="")
        )
    for row_id, dialogue, history in connection.execute(
        sa.text("SELECT id, dialogue, user_history FROM contexts")
    ):
        connection.execute(
            sa.text("UPDATE contexts SET content_hash = :h WHERE id = :i"),
            {"h": _hash(_load(dialogue), _load(history)), "i": row_id},
        )
    with op.batch_alter_table("contexts") as batch:
        batch.alter_column("content_hash", server_default=None)
        batch.drop_constraint("uq_contexts_source_external_id", type_="unique")
        batch.create_unique_constraint(
            "uq_contexts_source_external_id_content_hash",
            ["source", "external_id", "content_hash"],
        )

    with op.batch_alter_table("responses") as batch:
        batch.add_column(
            sa.Column("content_hash", sa.String(64), nullable=False, server_default="")
        )
    for row_id, text, items in connection.execute(sa.text("SELECT id, text, items FROM responses")):
        connection.execute(
            sa.text("UPDATE responses SET content_hash = :h WHERE id = :i"),
            {"h": _hash(text, _load(items)), "i": row_id},
        )
    with op.batch_alter_table("responses") as batch:
        batch.alter_column("content_hash", server_default=None)
        batch.drop_constraint("uq_responses_context_id_system_id", type_="unique")
        batch.create_unique_constraint(
            "uq_responses_context_id_system_id_content_hash",
            ["context_id", "system_id", "content_hash"],
        )

    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("settings", JSON_VALUE, nullable=False, server_default="{}"))
    with op.batch_alter_table("campaigns") as batch:
        batch.alter_column("settings", server_default=None)

    op.create_table(
        "task_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("created_campaign", sa.Boolean(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_task_imports"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name="fk_task_imports_campaign_id_campaigns",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('running', 'done', 'failed')", name="ck_task_imports_status"
        ),
    )

    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("stage", sa.String(20), nullable=False, server_default="main"))
        batch.add_column(sa.Column("feedback", sa.Text(), nullable=True))
        batch.add_column(sa.Column("import_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_tasks_import_id_task_imports",
            "task_imports",
            ["import_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_tasks_import_id", ["import_id"])
        batch.create_check_constraint("ck_tasks_stage", "stage IN ('main', 'onboarding')")
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("stage", server_default=None)

    with op.batch_alter_table("assignments") as batch:
        batch.add_column(sa.Column("queue_order", sa.Integer(), nullable=False, server_default="0"))
    # Existing queues keep the campaign's task order.
    connection.execute(
        sa.text(
            "UPDATE assignments SET queue_order = "
            "(SELECT position FROM tasks WHERE tasks.id = assignments.task_id)"
        )
    )
    with op.batch_alter_table("assignments") as batch:
        batch.alter_column("queue_order", server_default=None)

    with op.batch_alter_table("annotators") as batch:
        batch.add_column(sa.Column("external_id", sa.String(200), nullable=True))
        batch.create_unique_constraint("uq_annotators_external_id", ["external_id"])

    with op.batch_alter_table("judgments") as batch:
        batch.drop_constraint("ck_judgments_choice", type_="check")
        batch.create_check_constraint("ck_judgments_choice", "choice IN ('A', 'B', 'tie', 'n/a')")


def downgrade() -> None:
    raise NotImplementedError("0002 adds study data that 0001 cannot hold; restore a backup")
