"""scripts/setup.sh's last step builds the empty migrated Prefect and MLflow databases that a
first run copies, so the first run does not pay their migrations."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from textloop.core.db_template import seed_from_template, template_path


def test_setups_cache_step_builds_both_templates_that_new_projects_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as setup.sh runs it; a user's configured Prefect database URL (here one that cannot
    be reached, in the environment and in the prefect.toml of the folder it runs in) is not
    where the template is built; a new MLflow store is then a copy."""
    from mlflow.tracking import MlflowClient

    unreachable = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PREFECT_API_DATABASE_CONNECTION_URL": unreachable}
    here = tmp_path / "here"
    here.mkdir()
    (here / "prefect.toml").write_text(f'[server.database]\nconnection_url = "{unreachable}"\n')
    out = subprocess.run([sys.executable, "-m", "textloop.cli.prepare_cache"], env=env, cwd=here,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"empty Prefect and MLflow databases ready in {tmp_path / 'cache' / 'textloop'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with closing(sqlite3.connect(template_path("prefect"))) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "project" / "mlflow.db"
    seed_from_template(db, "mlflow", lambda path: pytest.fail("built instead of copied"))
    client = MlflowClient(f"sqlite:///{db}")
    assert client.create_experiment("textloop") == "1"


def test_a_cache_that_cannot_be_written_fails_the_step_with_the_paths_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """setup.sh goes on (the first run then migrates its own databases), but the step says so."""
    from textloop.cli import prepare_cache

    missing = {"prefect": tmp_path / "prefect-x.db", "mlflow": tmp_path / "mlflow-x.db"}
    monkeypatch.setattr(prepare_cache, "build_templates", lambda: missing)
    assert prepare_cache.main() == 1
    assert f"template databases not written: {missing['prefect']}, {missing['mlflow']}" in caplog.text
