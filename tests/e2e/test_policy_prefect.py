"""The monitor flow + retrain policy against a real (temporary) Prefect API: the report is
written and logged, the policy exports feedback once and starts the `lifecycle` deployment once
while that run is in flight."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from tests.support import fixtures
from tests.support.fixtures import synthetic
from textloop.loop import db
from textloop.loop import prefect_api as orchestration

pytestmark = pytest.mark.e2e

FLIP = {"pos": "neg", "neg": "pos"}
PARAMS = {"feedback": {"min_accuracy": 0.8, "min_new_rows": 1000},
          "monitor": {"min_rows": 50, "min_feedback": 20, "reference_rows": 2000},
          "retrain": {"cooldown_minutes": 0, "min_labeled_rows": 10,
                      "overrides": {"optimize.n_trials": 0}}}


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect server with a stub `lifecycle/lifecycle` deployment (no runner)."""
    with fixtures.prefect_api():
        yield


@pytest.fixture
def project(tmp_path, prefect_api, monkeypatch):
    """A project folder with a train shard and a prediction log where v1 fails on new words."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    # the exported feedback batch is versioned by DVC: the folder must be a DVC repository
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path,
                   check=True)
    shard = tmp_path / "data/04_shards/train"
    shard.mkdir(parents=True)
    synthetic(1000, seed=0).to_parquet(shard / "part-00000.parquet")
    monkeypatch.setenv("TEXTLOOP_PROJECT", str(tmp_path))
    engine = db.open_db(db.default_url(tmp_path / ".textloop"))
    stream = synthetic(120, seed=4, shifted=True)
    now = db.utcnow()
    preds = [{"id": uuid.uuid4().hex, "created_at": now - dt.timedelta(seconds=i),
              "model_name": "m", "model_version": "1", "text_hash": "h" * 64, "text": text,
              "label": FLIP[label] if i % 2 else label, "confidence": 0.6,
              "probas": {"neg": 0.6, "pos": 0.4}, "latency_ms": 1.0}
             for i, (text, label) in enumerate(zip(stream["text"], stream["label"]))]
    with engine.begin() as conn:
        conn.execute(db.predictions.insert(), preds)
    db.insert_feedback(engine, [{"prediction_id": p["id"], "text": p["text"], "label": label,
                                 "source": "api"}
                                for p, label in zip(preds[:40], stream["label"][:40])])
    return tmp_path, engine


def test_monitor_fires_the_policy_once_while_the_run_is_in_flight(project):
    from flows.monitor_flow import monitor
    from tasks.feedback import read_store

    root, engine = project
    first = monitor()
    assert any(a.startswith("live accuracy") for a in first["alerts"])
    assert any(a.startswith("OOV rate up") for a in first["alerts"])
    decision = first["decision"]
    assert decision["fire"] is True and decision["exported_rows"] == 40, decision
    active = orchestration.recent_runs("lifecycle", 5, active_only=True)
    assert [r["id"] for r in active] == [decision["flow_run_id"]]
    assert active[0]["parameters"] == {"overrides": {"optimize.n_trials": 0}}
    assert len(read_store(root / "data/07_feedback")) == 40

    second = monitor()
    assert second["decision"]["fire"] is False
    assert any("single-flight" in b for b in second["decision"]["blocked"])
    assert len(orchestration.recent_runs("lifecycle", 5)) == 1
    assert len(read_store(root / "data/07_feedback")) == 40  # nothing exported twice

    report = json.loads(Path(first["report"]).read_text())
    assert report["accuracy"]["accuracy"] == pytest.approx(0.5)
    assert {p.name for p in (root / first["report"]).parent.iterdir()} >= {
        "report.json", "class_mix.png", "confidence.png", "length.png"}
    assert [r["fired"] for r in db.recent_rows(engine, db.decisions)] == [True, False]
    assert len(db.recent_rows(engine, db.monitor_reports)) == 2
    # each monitor run applied serve.retention_days first (nothing old enough here)
    assert [(r["rows_purged"], r["retention_days"]) for r in db.recent_rows(engine, db.purges)
            ] == [(0, 30.0), (0, 30.0)]
    run = mlflow.MlflowClient().get_run(first["mlflow_run_id"])
    assert run.data.metrics["live_accuracy"] == pytest.approx(0.5)
    assert run.data.tags["retrain.fired"] == "true"
    assert run.data.tags["retrain.flow_run_id"] == decision["flow_run_id"]
    lines = (root / ".textloop/monitor/decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["fired"] for line in lines] == [True, False]
    assert pd.notna(db.recent_rows(engine, db.decisions)[0]["flow_run_id"])
