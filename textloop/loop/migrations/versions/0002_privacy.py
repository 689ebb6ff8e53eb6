"""Privacy: the prediction log may keep only the text hash; retention purges and erasures are
recorded.

Revision ID: privacy
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "privacy"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """predictions.text nullable (serve.log_text: false, retention); purges and erasures."""
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("text", existing_type=sa.Text(), nullable=True)
    op.create_table(
        "purges",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("retention_days", sa.Float(), nullable=False),
        sa.Column("cutoff", sa.DateTime(), nullable=False),
        sa.Column("rows_purged", sa.Integer(), nullable=False),
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("text_hash", sa.String(64), nullable=False, index=True),
        sa.Column("predictions_removed", sa.Integer(), nullable=False),
        sa.Column("feedback_removed", sa.Integer(), nullable=False),
        sa.Column("queue_removed", sa.Integer(), nullable=False),
        sa.Column("store_rows", sa.Integer(), nullable=False),
        sa.Column("trained_versions", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    """Drop the two tables; texts a purge emptied cannot come back, so text stays nullable."""
    op.drop_table("erasures")
    op.drop_table("purges")
