"""Prediction log, feedback, monitor reports and retrain decisions.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the four tables of the loop."""
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False, index=True),
        sa.Column("text_hash", sa.String(64), nullable=False, index=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probas", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("prediction_id", sa.String(32), nullable=True, index=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("source", sa.String(50), nullable=False),
        sa.Column("exported_at", sa.DateTime(), nullable=True, index=True),
        sa.Column("export_file", sa.String(500), nullable=True),
    )
    op.create_table(
        "monitor_reports",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("model_version", sa.String(32), nullable=True),
        sa.Column("n_predictions", sa.Integer(), nullable=False),
        sa.Column("n_feedback", sa.Integer(), nullable=False),
        sa.Column("live_accuracy", sa.Float(), nullable=True),
        sa.Column("class_psi", sa.Float(), nullable=True),
        sa.Column("oov_increase", sa.Float(), nullable=True),
        sa.Column("confidence_mean", sa.Float(), nullable=True),
        sa.Column("alerts", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("report_path", sa.String(500), nullable=True),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
        sa.Column("trigger", sa.String(50), nullable=False),
        sa.Column("fired", sa.Boolean(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("blocked", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("exported_rows", sa.Integer(), nullable=False),
        sa.Column("export_file", sa.String(500), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    """Drop the four tables."""
    for name in ("decisions", "monitor_reports", "feedback", "predictions"):
        op.drop_table(name)
