"""Alembic migrations of the prediction-log database (applied by textloop.serve.db.migrate)."""
