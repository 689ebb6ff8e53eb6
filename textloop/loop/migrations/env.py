"""Alembic environment: runs on the connection handed over by textloop.loop.db.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from textloop.loop.db import metadata


def _run(connection) -> None:
    """Run migrations on one connection; batch mode lets SQLite alter tables."""
    target = context.config.attributes.get("metadata", metadata)
    context.configure(connection=connection, target_metadata=target, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Use the caller's connection, or the configured URL when run from the alembic CLI."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)


main()
