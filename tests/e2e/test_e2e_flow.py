"""End to end: the real lifecycle flow (Prefect + DVC + MLflow) on a small sample."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.support.e2e_project import isolate_env, make_project, sample_csv

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

    forked = project.layout.stage_forks_log.read_text()  # the stage fork server's, stopped
    assert "`stage evaluate` exit 0" in forked and "exit 0" in forked.splitlines()[-1]
    second = lifecycle()
    assert second["stages_run"] == [] and second["stages_skipped"] == STAGES
    assert project.layout.stage_forks_log.read_text() == forked  # nothing ran: no server
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


def _cli_env() -> dict[str, str]:
    """This checkout's code and tools; no Prefect API or MLflow store of the test session."""
    import os
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TEXTLOOP_"))}
    env["PYTHONPATH"] = f"{repo}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES"] = "0"
    return env


def _ok(cmd: list[str], cwd, env) -> str:
    import subprocess

    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_dvc_exp_run_set_round_trips_every_kind_of_param_then_textloop_run_works(tmp_path):
    """The documented experiment path with DVC's own CLI: `dvc exp run -S` rewrites params.yaml
    with its YAML writer (quotes dropped, null written empty); a float, an int (a key the file
    left out: `+KEY`), a bool and an enum survive, `dvc exp show` lists them, and `textloop run`
    reads the rewritten file."""
    import subprocess
    import sys

    from textloop.core.config import load_params

    root = make_project(tmp_path / "proj", "sample.csv", **{"ingest.label_col": "sentiment"})
    sample_csv(root / "sample.csv", 150)
    env = _cli_env()
    textloop = [sys.executable, "-m", "textloop"]
    _ok([*textloop, "run"], root, env)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                    "baseline"], cwd=root, check=True)

    _ok([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.tfidf.C=8",
         "-S", "+train.tfidf.max_iter=500", "-S", "clean.lowercase=true",
         "-S", "evaluate.gate_metric=f1_macro"], root, env)
    text = (root / "params.yaml").read_text()
    assert "C: 8" in text and "issues: ignore" in text and "test_source: null" not in text
    params = load_params(root / "params.yaml")
    assert (params.train.tfidf.C, params.train.tfidf.max_iter) == (8.0, 500)
    assert params.clean.lowercase is True and params.evaluate.gate_metric == "f1_macro"
    assert params.label.issues == "ignore" and params.ingest.test_source is None

    shown = json.loads(_ok([sys.executable, "-m", "dvc", "exp", "show", "--json"], root, env))
    exp = next(e for row in shown for e in (row.get("experiments") or []))["revs"][0]["data"]
    data = exp["params"]["params.yaml"]["data"]
    assert data["train"]["tfidf"]["C"] == 8 and data["train"]["tfidf"]["max_iter"] == 500
    assert data["clean"]["lowercase"] is True and data["evaluate"]["gate_metric"] == "f1_macro"

    out = _json_tail(_ok([*textloop, "run", "--json"], root, env))
    assert out["state"] == "completed" and out["stages_run"] == []  # the experiment's outputs


def _json_tail(stdout: str) -> dict:
    """The JSON object `textloop run --json` prints last."""
    return json.loads(stdout[stdout.index("{"):])
