"""`textloop feedback check` goes through the retrain policy (textloop/loop/policy.run_policy):
the same new-feedback count as the policy's inputs (DB pending + store unconsumed), the same
cooldown and single-flight, every decision recorded; with a Prefect server the lifecycle
deployment starts, without one the lifecycle runs in-process after the decision was recorded.

Against a real temporary Prefect API (stub `lifecycle` deployment, no runner) and a tiny
registered champion in the project's own MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from tests.support import fixtures
from tests.support.e2e_project import isolate_env
from tests.support.fixtures import register_champion, synthetic, train_tiny
from textloop.loop import db
from textloop.loop import prefect_api as orchestration

pytestmark = pytest.mark.e2e

MODEL = "textloop-fbcheck"
PARAMS = {"deploy": {"model_name": MODEL},
          "feedback": {"min_accuracy": 0.8, "min_new_rows": 20},
          "retrain": {"cooldown_minutes": 60, "min_labeled_rows": 10,
                      "overrides": {"optimize.n_trials": 0}}}
runner = CliRunner()


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect server with a stub `lifecycle/lifecycle` deployment (no runner)."""
    with fixtures.prefect_api():
        yield


def _finish_active_runs() -> None:
    """Cancel lifecycle runs a test left scheduled, so the next test starts single-flight free."""
    from uuid import UUID

    from prefect import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        for run in orchestration.recent_runs("lifecycle", 50, active_only=True):
            client.set_flow_run_state(UUID(run["id"]), Cancelled(), force=True)


@pytest.fixture
def project(tmp_path, prefect_api, monkeypatch):
    """A project with a champion trained on the old vocabulary, and its loop database (empty)."""
    from textloop.core.layout import Project
    from textloop.loop.retrain_policy import policy_db_url
    from textloop.pipeline import tracking

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    isolate_env(monkeypatch, tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path,
                   check=True)  # exported feedback is versioned by `dvc add`
    proj = Project(tmp_path)
    mlflow.set_experiment(experiment_id=tracking.setup(proj))
    folder = train_tiny(synthetic(300, seed=1), tmp_path / "m1")
    register_champion(folder, MODEL)
    yield proj, db.open_db(policy_db_url(proj)), folder
    _finish_active_runs()


def _post_feedback(engine, n: int) -> list[dict]:
    """n labeled rows the API would have stored (POST /feedback), new vocabulary: v1 is weak."""
    stream = synthetic(n, seed=7, shifted=True)
    rows = [{"text": t, "label": lab, "source": "api", "prediction_id": None}
            for t, lab in zip(stream["text"], stream["label"])]
    db.insert_feedback(engine, rows)
    return rows


def _expected_accuracy(folder: Path, rows: list[dict]) -> float:
    """The champion's accuracy on the rows, computed straight from its model folder."""
    from tasks.train.baseline import load_sklearn

    pipe = load_sklearn(folder).pipeline
    pred = pipe.predict([r["text"] for r in rows])
    return sum(p == r["label"] for p, r in zip(pred, rows)) / len(rows)


def _check(*args: str) -> dict:
    """Run `textloop feedback check ARGS` and return its JSON line."""
    from textloop.cli import app

    result = runner.invoke(app, ["feedback", "check", *args])
    assert result.exit_code == 0, result.output
    return json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))


def test_dry_run_counts_db_pending_rows_like_the_policy(project):
    from tasks.feedback import append_batch
    from textloop.core.config import model_name
    from textloop.loop.retrain_policy import gather, policy_context

    proj, engine, folder = project
    rows = _post_feedback(engine, 30)
    out = _check("--dry-run")
    assert (out["new_rows"], out["pending_db_rows"], out["unconsumed_store_rows"]) == (30, 30, 0)
    assert out["new_rows"] == gather(policy_context(proj, engine), None).new_rows == 30
    assert out["accuracy"] == pytest.approx(_expected_accuracy(folder, rows))
    assert out["accuracy"] < 0.8 and out["retrain"] is True and out["trigger"] == "feedback"
    assert out["reasons"][0] == f"accuracy on new feedback {out['accuracy']:.3f} < 0.8 on 30 rows"
    assert "30 new labeled rows >= 20" in out["reasons"]
    assert out["decision_id"] is None and out["flow_run_id"] is None
    assert db.recent_rows(engine, db.decisions) == []          # nothing recorded
    assert orchestration.recent_runs("lifecycle", 5) == []      # nothing started
    assert db.counts(engine)["feedback_pending"] == 30          # nothing exported

    store = proj.path(proj.params().paths.feedback)
    task = model_name(proj.params())  # `feedback add` rows: labels of the project's task
    append_batch(store, synthetic(5, seed=9).assign(task=task), source="feedback")
    both = _check("--dry-run")
    assert (both["new_rows"], both["pending_db_rows"], both["unconsumed_store_rows"]) == (35, 30, 5)


def test_cooldown_blocks_and_the_decision_is_recorded(project):
    from tasks.feedback import read_store

    proj, engine, _ = project
    _post_feedback(engine, 30)
    db.insert_row(engine, db.decisions, {  # the monitor fired a retrain moments ago
        "trigger": "monitor", "fired": True, "reasons": ["drift"], "blocked": [], "metrics": {},
        "exported_rows": 0, "export_file": None, "flow_run_id": "earlier-run"})
    out = _check()
    assert out["retrain"] is False and out["flow_run_id"] is None and out["exported_rows"] == 0
    assert any(b.startswith("cooldown: last retrain") for b in out["blocked"]), out["blocked"]
    rows = db.recent_rows(engine, db.decisions)
    assert len(rows) == 2 and rows[-1]["id"] == out["decision_id"]
    last = rows[-1]
    assert (last["trigger"], last["fired"], last["flow_run_id"]) == ("feedback", False, None)
    assert any("cooldown" in b for b in last["blocked"])
    assert last["metrics"]["pending_rows"] == 30 and last["metrics"]["accuracy_on"] == "new feedback"
    assert orchestration.recent_runs("lifecycle", 5) == []      # no run started
    assert db.counts(engine)["feedback_pending"] == 30          # nothing exported
    assert read_store(proj.path(proj.params().paths.feedback)).empty
    journal = (proj.state / "monitor" / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["trigger"] for line in journal] == ["feedback"]


def test_with_a_server_it_starts_the_deployment_once(project):
    from tasks.feedback import read_store

    proj, engine, _ = project
    _post_feedback(engine, 30)
    out = _check()
    assert out["retrain"] is True and out["exported_rows"] == 30 and out["blocked"] == []
    active = orchestration.recent_runs("lifecycle", 5, active_only=True)
    assert [r["id"] for r in active] == [out["flow_run_id"]]
    assert active[0]["parameters"] == {"overrides": {"optimize.n_trials": 0}}
    store = proj.path(proj.params().paths.feedback)
    assert len(read_store(store)) == 30 and store.with_name(store.name + ".dvc").is_file()
    row = db.recent_rows(engine, db.decisions)[-1]
    assert (row["trigger"], row["fired"], row["flow_run_id"]) == ("feedback", True,
                                                                   out["flow_run_id"])
    again = _check()  # the exported rows are still new feedback, but the cooldown now holds
    assert again["retrain"] is False and again["new_rows"] == 30
    assert any("single-flight" in b for b in again["blocked"])
    assert any("cooldown" in b for b in again["blocked"])
    assert len(orchestration.recent_runs("lifecycle", 5)) == 1


def test_without_a_server_the_lifecycle_runs_in_process_after_the_record(project, monkeypatch):
    from prefect import flow

    import flows.lifecycle

    seen: list[dict] = []
    _, engine, _ = project

    def lifecycle_spy(overrides: dict | None = None) -> dict:
        """Stands in for the lifecycle: notes the decision row as the run begins."""
        seen.append(db.recent_rows(engine, db.decisions)[-1])
        return {"stages_run": [], "overrides": overrides}

    monkeypatch.setattr(orchestration, "api_configured", lambda: False)
    monkeypatch.setattr(flows.lifecycle, "lifecycle", flow(name="lifecycle")(lifecycle_spy))
    _post_feedback(engine, 30)
    out = _check()
    assert out["retrain"] is True and out["exported_rows"] == 30
    assert len(seen) == 1 and seen[0]["fired"] is True and seen[0]["trigger"] == "feedback"
    assert seen[0]["flow_run_id"] == out["flow_run_id"]
    run = orchestration.read_run(out["flow_run_id"])
    assert run["state_type"] == "COMPLETED" and run["parameters"] == {
        "overrides": {"optimize.n_trials": 0}}
