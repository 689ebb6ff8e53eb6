"""Alembic migrations of the prediction-log database (applied by textloop.loop.db.migrate)."""
