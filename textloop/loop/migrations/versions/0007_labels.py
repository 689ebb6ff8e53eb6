"""Task scope of feedback: every feedback row names the task (the registered model) it labels.

Revision ID: labels
Revises: 4cf9f1e4edf8
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "labels"
down_revision = "4cf9f1e4edf8"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """feedback.task (null: stored before feedback carried its task)."""
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("task", sa.String(256), nullable=True))
        batch.create_index("ix_feedback_task", ["task"])


def downgrade() -> None:
    """Drop feedback.task."""
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_task")
        batch.drop_column("task")
