"""The loop database's schema is declared once (the SQLAlchemy tables in textloop.loop.db); the
migrations are generated from that declaration and must build exactly it."""

from __future__ import annotations

import shutil

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from textloop.loop import db


def _diff(engine: sa.engine.Engine, metadata: sa.MetaData) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, metadata)


def test_the_migrations_build_exactly_the_declared_schema(tmp_path) -> None:
    engine = db.open_db(f"sqlite:///{tmp_path / 'loop.db'}")  # every revision, from empty
    assert _diff(engine, db.metadata) == []
    command.check(db.alembic_config(engine))  # alembic's own check: nothing to generate


def test_adding_a_column_is_one_declaration_and_a_generated_revision(tmp_path) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    declared = sa.MetaData()
    for table in db.metadata.tables.values():
        table.to_metadata(declared)
    declared.tables["feedback"].append_column(sa.Column("annotator_note", sa.Text(),
                                                        nullable=True))
    path = db.new_revision("feedback annotator note", directory=scripts, target=declared)
    text = path.read_text(encoding="utf-8")
    assert "op.add_column" in text and "annotator_note" in text
    assert "create_table" not in text  # only the change, nothing retyped
    engine = db.make_engine(f"sqlite:///{tmp_path / 'loop.db'}")
    db.migrate(engine, directory=scripts)
    assert _diff(engine, declared) == []
    with engine.connect() as conn:
        cols = {c["name"] for c in sa.inspect(conn).get_columns("feedback")}
    assert "annotator_note" in cols
