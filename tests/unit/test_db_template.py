"""A new project's tracking store starts as a copy of a migrated empty one kept in the user's
cache, and still holds what MLflow would have written into a new file itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from textloop.core.db_template import seed_from_template, template_path
from textloop.pipeline import tracking


def test_a_new_tracking_store_is_the_template_with_its_own_default_experiment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    builds: list[Path] = []

    def build(db: Path) -> None:
        builds.append(db)
        tracking.empty_store(db)

    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)  # MLflow puts the Default experiment under ./mlruns
        db = folder / "mlflow.db"
        seed_from_template(db, "mlflow", build)
        client = MlflowClient(f"sqlite:///{db}")
        default = client.get_experiment("0")
        assert (default.name, default.artifact_location) == ("Default", str(folder / "mlruns" / "0"))
        assert [e.experiment_id for e in client.search_experiments()] == ["0"]
        assert client.create_experiment("textloop") == "1"
    assert builds == [tmp_path / "first" / "mlflow.db"]  # the second project copied the template
    assert template_path("mlflow").is_file()


def test_an_existing_database_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"kept")
    seed_from_template(db, "mlflow", lambda path: pytest.fail("built over an existing database"))
    assert db.read_bytes() == b"kept"


def _tiny_db(db: Path) -> None:
    """A stand-in for a library's migrations: one table."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
        conn.execute("INSERT INTO alembic_version VALUES ('v1')")


def test_a_broken_template_is_built_again_not_copied_into_the_project(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A template overwritten with 4 KB of random bytes: a copy would break the project's first
    run with 'file is not a database'; the project builds its own and the template is replaced."""
    import os

    from textloop.core.db_template import usable

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = template_path("mlflow")
    template.parent.mkdir(parents=True)
    template.write_bytes(os.urandom(4096))
    builds: list[Path] = []
    db = tmp_path / "project" / "mlflow.db"
    seed_from_template(db, "mlflow", lambda path: (builds.append(path), _tiny_db(path)))
    assert builds == [db] and usable(db) and usable(template)
    assert f"{template} is not a usable database" in caplog.text


def test_a_cache_path_that_is_a_file_still_gives_the_project_its_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from textloop.core.db_template import usable

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "afile"))
    db = tmp_path / "project" / "mlflow.db"
    seed_from_template(db, "mlflow", _tiny_db)
    assert usable(db) and not template_path("mlflow").exists()
    assert "could not keep a template database" in caplog.text
