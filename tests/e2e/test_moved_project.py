"""A project folder moved or copied elsewhere keeps working on its own state: its MLflow store's
artifact locations follow it, and service records copied in with it are not taken for its own."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pandas as pd
import psutil
from typer.testing import CliRunner

BOM_INPUT = "\ufefftext,id\ngreat game today,1\nterrible loss,2\n"


def _project(tmp_path, monkeypatch):
    """A project `p1` with a tiny registered champion (pos/neg)."""
    from tests.support import fixtures as testing
    from tests.support.e2e_project import isolate_env, make_project

    root = make_project(tmp_path / "p1", "data.csv", **{"deploy.model_name": "moved"})
    isolate_env(monkeypatch, root)
    with testing.mlflow_sandbox(root / ".textloop"):
        folder = testing.train_tiny(testing.synthetic(300, seed=1), tmp_path / "m")
        testing.register_champion(folder, "moved")
    return root


def _locations(db) -> list[str]:
    """Every artifact location the store holds."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT artifact_location FROM experiments UNION ALL "
                            "SELECT artifact_uri FROM runs UNION ALL "
                            "SELECT storage_location FROM model_versions").fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows if r[0]]


def test_a_copied_project_predicts_from_its_own_store_after_the_original_is_gone(
        tmp_path, monkeypatch):
    """`cp -a p1 p1copy; mv p1 p1away; cd p1copy; textloop predict bom.csv` used to fail with
    MLflow's "No such artifact" traceback (absolute locations of p1), and while p1 existed the
    copy read and wrote p1's artifacts."""
    from tests.support.e2e_project import isolate_env
    from textloop.cli import app

    root = _project(tmp_path, monkeypatch)
    # a live service record of p1 (its Prefect server: here this process), copied in with it
    run_dir = root / ".textloop" / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    (run_dir / "prefect-server.json").write_text(json.dumps({
        "name": "prefect-server", "pid": me.pid, "create_time": me.create_time(), "cmd": [],
        "url": "http://127.0.0.1:41151", "log": str(root / ".textloop/logs/prefect-server.log"),
        "api_url": "http://127.0.0.1:41151/api"}))
    copy = tmp_path / "p1copy"
    shutil.copytree(root, copy, symlinks=True)
    root.rename(tmp_path / "p1away")
    isolate_env(monkeypatch, copy)
    src = copy / "bom.csv"
    src.write_text(BOM_INPUT, encoding="utf-8")
    out = copy / "copy_out.csv"
    result = CliRunner().invoke(app, ["predict", str(src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["pred_label"].notna().tolist() == [True, True]
    located = [loc for loc in _locations(copy / ".textloop" / "mlflow.db")
               if loc.startswith("file://")]
    assert located and all(loc.startswith((copy / ".textloop").as_uri()) for loc in located)

    from textloop import services
    from textloop.core.layout import Project

    assert services.running(Project(tmp_path / "p1away"), "prefect-server") is None  # moved too
    assert services.running(Project(copy), "prefect-server") is None
    assert not (copy / ".textloop/run/prefect-server.json").exists()
