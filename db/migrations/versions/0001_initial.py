"""Initial schema: systems, contexts, responses, campaigns, annotation, arena votes.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of db.schema's column types, so that later model changes cannot alter history.
JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_DATETIME = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "systems",
        _id(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_systems"),
        sa.UniqueConstraint("name", "version", name="uq_systems_name_version"),
    )
    op.create_table(
        "contexts",
        _id(),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("dialogue", JSON_VALUE, nullable=False),
        sa.Column("user_history", JSON_VALUE, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_contexts"),
        sa.UniqueConstraint("source", "external_id", name="uq_contexts_source_external_id"),
    )
    op.create_table(
        "responses",
        _id(),
        sa.Column("context_id", sa.Integer(), nullable=False),
        sa.Column("system_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("items", JSON_VALUE, nullable=False),
        sa.Column("trace", JSON_VALUE, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_responses"),
        sa.ForeignKeyConstraint(
            ["context_id"], ["contexts.id"], name="fk_responses_context_id_contexts"
        ),
        sa.ForeignKeyConstraint(
            ["system_id"], ["systems.id"], name="fk_responses_system_id_systems"
        ),
        sa.UniqueConstraint("context_id", "system_id", name="uq_responses_context_id_system_id"),
    )
    op.create_index("ix_responses_system_id", "responses", ["system_id"])

    op.create_table(
        "campaigns",
        _id(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("template", sa.String(50), nullable=False),
        sa.Column("criteria", JSON_VALUE, nullable=False),
        sa.Column("task_kinds", JSON_VALUE, nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("assignment_policy", sa.String(20), nullable=False),
        sa.Column("guidelines", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
        sa.UniqueConstraint("name", name="uq_campaigns_name"),
        sa.CheckConstraint("overlap >= 1", name="ck_campaigns_overlap"),
        sa.CheckConstraint(
            "assignment_policy IN ('round-robin', 'random', 'least-done')",
            name="ck_campaigns_assignment_policy",
        ),
    )
    op.create_table(
        "annotators",
        _id(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("excluded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_annotators"),
        sa.UniqueConstraint("name", name="uq_annotators_name"),
        sa.UniqueConstraint("token_hash", name="uq_annotators_token_hash"),
        sa.CheckConstraint("role IN ('annotator', 'admin')", name="ck_annotators_role"),
    )
    op.create_table(
        "tasks",
        _id(),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("context_id", sa.Integer(), nullable=False),
        sa.Column("response_a_id", sa.Integer(), nullable=False),
        sa.Column("response_b_id", sa.Integer(), nullable=True),
        sa.Column("gold", JSON_VALUE, nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name="fk_tasks_campaign_id_campaigns"
        ),
        sa.ForeignKeyConstraint(
            ["context_id"], ["contexts.id"], name="fk_tasks_context_id_contexts"
        ),
        sa.ForeignKeyConstraint(
            ["response_a_id"], ["responses.id"], name="fk_tasks_response_a_id_responses"
        ),
        sa.ForeignKeyConstraint(
            ["response_b_id"], ["responses.id"], name="fk_tasks_response_b_id_responses"
        ),
        sa.UniqueConstraint(
            "campaign_id",
            "kind",
            "context_id",
            "response_a_id",
            "response_b_id",
            name="uq_tasks_content",
        ),
        sa.CheckConstraint("kind IN ('rating', 'pairwise')", name="ck_tasks_kind"),
        sa.CheckConstraint(
            "(kind = 'rating' AND response_b_id IS NULL)"
            " OR (kind = 'pairwise' AND response_b_id IS NOT NULL)",
            name="ck_tasks_responses_match_kind",
        ),
    )
    op.create_table(
        "assignments",
        _id(),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("left_is_a", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("assigned_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_assignments"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_assignments_task_id_tasks"),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name="fk_assignments_annotator_id_annotators"
        ),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_assignments_task_id_annotator_id"),
        sa.CheckConstraint(
            "status IN ('pending', 'done', 'skipped')", name="ck_assignments_status"
        ),
    )
    op.create_index("ix_assignments_annotator_id", "assignments", ["annotator_id"])

    op.create_table(
        "judgments",
        _id(),
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("criterion", sa.String(100), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("choice", sa.String(10), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("submitted_at", UTC_DATETIME, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_judgments"),
        sa.ForeignKeyConstraint(
            ["assignment_id"], ["assignments.id"], name="fk_judgments_assignment_id_assignments"
        ),
        sa.UniqueConstraint(
            "assignment_id",
            "criterion",
            "revision",
            name="uq_judgments_assignment_id_criterion_revision",
        ),
        sa.CheckConstraint("choice IN ('A', 'B', 'tie')", name="ck_judgments_choice"),
        sa.CheckConstraint(
            "rating IS NOT NULL OR choice IS NOT NULL", name="ck_judgments_has_answer"
        ),
        sa.CheckConstraint("revision >= 0", name="ck_judgments_revision"),
    )
    op.create_table(
        "events",
        _id(),
        sa.Column("annotator_id", sa.Integer(), nullable=True),
        sa.Column("assignment_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("payload", JSON_VALUE, nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name="fk_events_annotator_id_annotators"
        ),
        sa.ForeignKeyConstraint(
            ["assignment_id"], ["assignments.id"], name="fk_events_assignment_id_assignments"
        ),
    )
    op.create_index("ix_events_annotator_id", "events", ["annotator_id"])
    op.create_index("ix_events_assignment_id", "events", ["assignment_id"])

    op.create_table(
        "arena_votes",
        _id(),
        sa.Column("round_id", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(10), nullable=False),
        sa.Column("model_a", sa.String(200), nullable=False),
        sa.Column("model_a_version", sa.String(200), nullable=False),
        sa.Column("model_b", sa.String(200), nullable=False),
        sa.Column("model_b_version", sa.String(200), nullable=False),
        sa.Column("left_model", sa.String(200), nullable=False),
        sa.Column("vote", sa.String(10), nullable=False),
        sa.Column("conversation_a", JSON_VALUE, nullable=False),
        sa.Column("conversation_b", JSON_VALUE, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("voted_at", UTC_DATETIME, nullable=False),
        sa.Column("session_id", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_arena_votes"),
        sa.UniqueConstraint("round_id", name="uq_arena_votes_round_id"),
        sa.CheckConstraint("mode IN ('blind', 'named')", name="ck_arena_votes_mode"),
        sa.CheckConstraint("vote IN ('A', 'B', 'tie', 'both_bad')", name="ck_arena_votes_vote"),
        sa.CheckConstraint(
            "left_model = model_a OR left_model = model_b", name="ck_arena_votes_left_model"
        ),
    )
    op.create_index("ix_arena_votes_voted_at", "arena_votes", ["voted_at"])


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes.
    for table in (
        "arena_votes",
        "events",
        "judgments",
        "assignments",
        "tasks",
        "annotators",
        "campaigns",
        "responses",
        "contexts",
        "systems",
    ):
        op.drop_table(table)
