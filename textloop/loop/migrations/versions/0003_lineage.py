"""Alias history: every move of a registry alias (who, when, why).

Revision ID: lineage
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "lineage"
down_revision = "privacy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create alias_history."""
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("move_id", sa.String(32), nullable=False, unique=True),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False, index=True),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("from_version", sa.String(32), nullable=True),
        sa.Column("to_version", sa.String(32), nullable=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    """Drop alias_history."""
    op.drop_table("alias_history")
