"""Shadow predictions (the challenger's answer to a served request) and the alert delivery log.

Revision ID: production
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "production"
down_revision = "active"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create shadow_predictions and alert_deliveries."""
    op.create_table(
        "shadow_predictions",
        sa.Column("prediction_id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False, index=True),
        sa.Column("champion_version", sa.String(32), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probas", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
    )
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("event", sa.String(50), nullable=False, index=True),
        sa.Column("sink", sa.String(500), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(200), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("alert_deliveries")
    op.drop_table("shadow_predictions")
