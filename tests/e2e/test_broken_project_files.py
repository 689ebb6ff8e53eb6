"""A broken project or state file is one line naming the file, the position and what to do
(exit 2), and nothing is changed: params.yaml saved as cp1252, dvc.lock holding git
merge-conflict markers, the MLflow database held locked by another process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from tests.support.e2e_project import isolate_env, make_project, sample_csv
from textloop.cli import app

CONFLICTED_LOCK = """schema: '2.0'
stages:
<<<<<<< HEAD
  ingest:
    cmd: bash scripts/stage.sh ingest
=======
  ingest:
    cmd: bash scripts/stage.sh ingest --fast
>>>>>>> other
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    source = sample_csv(tmp_path / "in.csv", 60)
    root = make_project(tmp_path / "p", str(source))
    isolate_env(monkeypatch, root)
    return root


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.parts and ".textloop" not in p.parts}


def _one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_params_yaml_saved_as_cp1252_is_one_line_for_status_run_and_predict(project, tmp_path):
    params = project / "params.yaml"
    params.write_bytes("# réglages du projet\n".encode("cp1252") + params.read_bytes())
    before = _snapshot(project)
    for args in (["status"], ["run"], ["predict", str(tmp_path / "in.csv")]):
        line = _one_error_line(CliRunner().invoke(app, args))
        assert "params.yaml" in line and "line 1" in line and "UTF-8" in line, (args, line)
    assert _snapshot(project) == before


def test_dvc_lock_with_merge_conflict_markers_stops_run_and_shows_in_status(project):
    (project / "dvc.lock").write_text(CONFLICTED_LOCK)
    before = _snapshot(project)
    line = _one_error_line(CliRunner().invoke(app, ["run"]))
    assert "dvc.lock" in line and "line 3" in line and "conflict" in line
    assert _snapshot(project) == before
    shown = CliRunner().invoke(app, ["status"])
    assert "dvc.lock" in shown.output and "conflict" in shown.output, shown.output
    assert "Traceback" not in shown.output


def test_mlflow_database_locked_by_another_process_is_waited_for_then_named(project):
    assert CliRunner().invoke(app, ["status"]).exit_code == 0  # the MLflow store exists
    (project / "textloop.yaml").write_text("backend:\n  db_lock_wait_s: 2\n")
    db_file = project / ".textloop" / "mlflow.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sqlite3, sys\n"
         f"c = sqlite3.connect({str(db_file)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        result = CliRunner().invoke(app, ["status"])
        took = time.monotonic() - start
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    line = _one_error_line(result)
    assert "mlflow.db" in line and "locked" in line and "2" in line
    assert 1.5 <= took < 8, took
    assert "sqlalchemy" not in result.output.lower()
