"""End to end: the real lifecycle flow (Prefect + DVC + MLflow) on a small sample."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.e2e_project import isolate_env, make_project, sample_csv

STAGES = ["ingest", "clean", "label", "shard", "train", "optimize", "evaluate"]


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.e2e
def test_lifecycle_end_to_end(tmp_path, monkeypatch, harness):
    from mlflow import MlflowClient

    from flows.lifecycle import lifecycle
    from textloop.cli.retrain import InProcessLifecycle
    from textloop.core.layout import Project
    from textloop.loop.feedback_actions import add, check
    from textloop.pipeline.status import status

    root = make_project(tmp_path / "proj", "sample.csv", **{"retrain.min_labeled_rows": 10})
    sample_csv(root / "sample.csv", 450)
    isolate_env(monkeypatch, root)
    project = Project(root)

    first = lifecycle(label_col="sentiment")
    assert first["state"] == "completed"
    assert first["stages_run"] == ["ingest", *STAGES[1:]]
    metrics = json.loads((root / "metrics/metrics.json").read_text())
    assert 0.0 < metrics["accuracy"] <= 1.0 and "f1_macro" in metrics
    assert (root / "metrics/plots/confusion_matrix.png").stat().st_size > 1000
    assert first["deploy"]["registered"] and first["deploy"]["promoted"]
    info = status(project)
    champ = info["champion"]
    assert champ["version"] == "1" and champ["metrics"]["accuracy"] == pytest.approx(
        metrics["accuracy"], abs=1e-6)
    assert champ["data_hash"] and champ["labels"] == ["negative", "neutral", "positive"]
    run = MlflowClient().get_run(first["mlflow_run_id"])
    assert run.data.tags["prefect.flow_run_id"] == first["flow_run_id"]
    assert any(k.startswith("dvc.md5.") for k in run.data.tags)
    assert run.inputs.dataset_inputs[0].dataset.digest == champ["data_hash"]

    second = lifecycle()
    assert second["stages_run"] == [] and second["stages_skipped"] == STAGES
    assert second["deploy"]["registered"] is False

    # 25 distinct texts: near-copies ("... number 1", "... number 2") would form one
    # near-duplicate group and land in one split (shard.near_duplicates), leaving train unchanged
    words = ["traffic", "sensor", "crash", "street", "lawsuit", "braking", "lidar", "city",
             "pedestrian", "recall", "software", "highway", "night", "rain", "insurance"]
    rng = np.random.default_rng(0)
    fb = pd.DataFrame({"text": [f"driverless cars are a menace {' '.join(rng.choice(words, 5))} {i}"
                                for i in range(25)], "label": "negative"})
    fb.to_csv(root / "fb.csv", index=False)
    assert add(project, root / "fb.csv", "feedback")["rows"] == 25
    starter = InProcessLifecycle()  # what `feedback check` uses when no Prefect server is up
    decision = check(project, starter=starter)
    assert decision["retrain"] and decision["new_rows"] == 25 and decision["flow_run_id"]
    assert "25 new labeled rows >= 20" in decision["reasons"]
    third = starter.run()  # the recorded decision's run, executed in this process
    assert third["flow_run_id"] == decision["flow_run_id"]
    assert "ingest" in third["stages_run"] and third["deploy"]["registered"]
    assert third["deploy"]["version"] == "2"
    assert check(project, dry_run=True)["new_rows"] == 0
