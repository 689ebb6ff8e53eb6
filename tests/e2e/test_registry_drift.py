"""The registry and the alias history never drift apart: the champion version deleted through
the MLflow client (as in the MLflow UI) leaves the running API answering with the loaded
model but reporting degraded (and alerting), `textloop status` names the deleted version and
where rollback goes, and `textloop rollback` goes to the latest earlier champion still
registered; `rollback --to` a pending version that was never approved needs --force, and then
the version stops being pending (one alias role per version)."""

from __future__ import annotations

import json
import subprocess

import httpx
import mlflow
import pytest
from typer.testing import CliRunner

from tests.support import fixtures as testing
from tests.support.receivers import webhook_receiver
from textloop.core.config import Params
from textloop.core.layout import Project, project_env
from textloop.loop import aliases, db
from textloop.pipeline import registry
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings

MODEL = "drift-model"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git project whose MLflow store holds v1..v4 of MODEL; champion moved v1 -> v2 -> v3
    through the loop database, v4 pending (never approved)."""
    from textloop.pipeline import tracking

    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(f"deploy: {{model_name: {MODEL}}}\n")
    (root / "dvc.yaml").write_text("stages: {}\n")
    for cmd in (["init", "-q"], ["add", "-A"],
                ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "p"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    proj = Project(root)
    for key, value in project_env(proj).items():
        monkeypatch.setenv(key, value)
    mlflow.set_experiment(experiment_id=tracking.setup(proj))
    folder = testing.train_tiny(testing.synthetic(120, seed=7), tmp_path / "model")
    v1 = testing.register_champion(folder, MODEL, alias=None)
    source = registry.get_version(MODEL, v1).source
    client = registry.mlflow_client()
    versions = [v1] + [str(client.create_model_version(MODEL, source).version) for _ in range(3)]
    journal = aliases.db_journal(aliases.project_engine(proj))
    for v in versions[:3]:
        registry.move_alias(MODEL, "champion", v, action="deploy", reason="gate passed",
                            actor="run r", journal=journal)
    registry.move_alias(MODEL, "pending", versions[3], action="pending", reason="passed",
                        actor="run r", journal=journal)
    monkeypatch.chdir(root)
    return proj, versions


def _cli(*args: str):
    from textloop.cli import app

    return CliRunner().invoke(app, list(args))


def _champion() -> str | None:
    held = registry.current_champion(registry.mlflow_client(), MODEL)
    return None if held is None else str(held.version)


def test_a_deleted_champion_degrades_the_api_and_rollback_goes_to_the_last_live_one(
        project) -> None:
    proj, (v1, v2, v3, _v4) = project
    with webhook_receiver() as (hook, got):
        params = Params.model_validate({"serve": {"poll_s": 60}, "alerts": {
            "webhooks": [{"url": hook, "events": ["served_model_missing"]}]}})
        settings = ServeSettings(model_name=MODEL, db_url=db.default_url(proj.state),
                                 token="t", params=params)
        app = create_app(settings)
        with testing.serve_in_thread(app) as url:
            assert httpx.get(f"{url}/health").json()["model_version"] == v3
            registry.mlflow_client().delete_model_version(MODEL, v3)  # as in the MLflow UI
            app.state.watcher.refresh()  # the watcher's timer tick
            health = httpx.get(f"{url}/health")
            body = health.json()
            assert health.status_code == 200 and body["status"] == "degraded"
            assert body["model_version"] == v3 and f"v{v3} deleted" in body["reason"]
            answer = httpx.post(f"{url}/predict", json={"text": "a great film"})
            assert answer.status_code == 200  # still answering with the loaded model
            assert answer.json()["model"]["version"] == v3
        alerts = [json.loads(i["body"]) for i in got.items]
    assert [a["event"] for a in alerts] == ["served_model_missing"]
    assert f"v{v3} deleted" in alerts[0]["payload"]["reason"]
    status = _cli("status")
    assert status.exit_code == 0, status.output
    assert f"v{v3} was deleted from the registry" in status.output
    assert f"goes back to v{v2}" in status.output
    back = _cli("rollback", "--reason", "v3 deleted")
    assert back.exit_code == 0, back.output
    assert f"none -> v{v2}" in back.output and _champion() == v2  # not the deleted v3
    registry.mlflow_client().delete_model_version(MODEL, v1)
    registry.mlflow_client().delete_model_version(MODEL, v2)
    nothing = _cli("rollback", "--reason", "again")
    assert nothing.exit_code == 2 and "--to VERSION" in nothing.output


def test_rollback_to_a_never_approved_pending_version_needs_force(project) -> None:
    _proj, (_v1, _v2, v3, v4) = project
    refused = _cli("rollback", "--to", v4, "--reason", "try v4")
    assert refused.exit_code == 2
    assert f"v{v4} was never champion nor approved" in refused.output
    assert "--force" in refused.output and _champion() == v3
    forced = _cli("rollback", "--to", v4, "--reason", "try v4", "--force")
    assert forced.exit_code == 0, forced.output
    assert _champion() == v4 and registry.pending_info(MODEL) is None  # one role per version
    assert registry.get_version(MODEL, v4).tags["approval.state"] == "forced"
    late = _cli("approve", v4, "--reason", "looks fine", "--user", "bo")  # decided already
    assert late.exit_code == 3 and len(late.output.strip().splitlines()) == 1
    assert f"v{v4} is not pending approval" in late.output and "force by" in late.output
