"""Alerts and clean-up in the dashboard: the newest alert deliveries are listed (page and
GET /api/alerts); POST /api/gc needs the token, answers 503 without a project folder and, in a
project, reports a dry run without removing anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import pytest

from tests.support import fixtures as testing
from textloop.core.config import Params
from textloop.core.layout import Project
from textloop.loop import db
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings

TOKEN = "controls-token"
MODEL = "controls-model"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A DVC project with one registered champion version and an MLflow store in its state."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(f"deploy:\n  model_name: {MODEL}\n")
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True)
    proj = Project(root)
    proj.state.mkdir(parents=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proj.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", proj.tracking_uri)
    mlflow.set_tracking_uri(proj.tracking_uri)
    mlflow.set_registry_uri(proj.tracking_uri)
    mlflow.set_experiment("controls")  # no experiment id left over from another test's store
    folder = testing.train_tiny(testing.synthetic(200, seed=3), tmp_path / "m1")
    testing.register_champion(folder, MODEL, {"gate_metric": "accuracy"})
    yield proj
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _app(proj: Project | None, state):
    settings = ServeSettings(model_name=MODEL, db_url=db.default_url(state), token=TOKEN,
                             params=Params(), project_root=proj.root if proj else None,
                             state=state)
    return create_app(settings)


def test_deliveries_listed_and_gc_guarded(tmp_path):
    with testing.mlflow_sandbox(tmp_path / "mlflow"):  # no champion: only the page's tables
        _deliveries_and_guard(tmp_path)


def _deliveries_and_guard(tmp_path) -> None:
    app = _app(None, tmp_path / "state")
    with db.open_db(db.default_url(tmp_path / "state")).begin() as conn:
        conn.execute(db.alert_deliveries.insert().values(
            created_at=db.utcnow(), event="drift", sink="http://127.0.0.1:9/hook", attempts=4,
            ok=False, status="connection refused", payload={"event": "drift"}))
    with testing.serve_in_thread(app) as url:
        got = httpx.get(f"{url}/api/alerts").json()["deliveries"]
        assert [(d["event"], d["ok"], d["attempts"]) for d in got] == [("drift", False, 4)]
        page = httpx.get(f"{url}/dashboard").text
        assert 'id="deliveries-body"' in page and "connection refused" in page
        assert httpx.post(f"{url}/api/gc", json={}).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        no_project = httpx.post(f"{url}/api/gc", json={}, headers=auth)
        assert no_project.status_code == 503 and "project folder" in no_project.text
        assert httpx.post(f"{url}/api/gc", json={"dry_run": "maybe"},
                          headers=auth).status_code == 422


def test_gc_dry_run_from_the_api_reports_and_removes_nothing(project):
    before = sorted(p.name for p in project.state.rglob("*"))
    with testing.serve_in_thread(_app(project, project.state)) as url:
        resp = httpx.post(f"{url}/api/gc", json={"dry_run": True}, timeout=120,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["dry_run"] is True and report["protected_versions"] == {"1": "champion"}
    assert report["bytes"] == report["mlflow_bytes"] + report["dvc_bytes"]
    assert set(before) <= {p.name for p in project.state.rglob("*")}  # nothing removed
