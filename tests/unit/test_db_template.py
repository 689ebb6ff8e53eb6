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
        tracking._empty_store(db)

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
