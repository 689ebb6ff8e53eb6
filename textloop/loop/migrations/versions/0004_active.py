"""Label answers from the /label page (active learning).

Revision ID: active
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "active"
down_revision = "lineage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """One row per answer: who, when, which item (and where it came from), which label."""
    op.create_table(
        "label_answers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("annotator", sa.String(100), nullable=False, index=True),
        sa.Column("item_id", sa.String(100), nullable=False, index=True),
        sa.Column("origin", sa.String(20), nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False, index=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("feedback_id", sa.Integer(), nullable=True, index=True),
        sa.UniqueConstraint("item_id", "annotator", name="uq_label_answers_item_annotator"),
    )


def downgrade() -> None:
    """Drop the answers table."""
    op.drop_table("label_answers")
