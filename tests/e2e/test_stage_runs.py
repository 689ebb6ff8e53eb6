"""A stage's MLflow run is the same whether the stage logs it itself (`dvc repro`, `dvc exp run`)
or its process records it and the lifecycle flow logs it (`textloop run`): same names, nesting,
tags, params, metrics, artifacts and status, read back with the real MLflow client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.e2e_project import REPO, isolate_env, sample_csv
from textloop.core.config import apply_overrides
from textloop.core.layout import Project
from textloop.pipeline import tracking
from textloop.pipeline.recorded_runs import flow_records, log_recorded

# tags that name the run's place, not what it logged
PLACE = ("mlflow.parentRunId",)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (params.yaml + dvc.yaml, no DVC run) over a small sample, env isolated;
    MLflow's process-wide URIs restored after."""
    import mlflow

    root = tmp_path / "p"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml", "tests_behaviour.yaml"):
        shutil.copy(REPO / name, root / name)
    sample_csv(root / "sample.csv", 150)
    (root / "data" / "07_feedback").mkdir(parents=True)
    apply_overrides(root / "params.yaml", {
        "ingest.source": "sample.csv", "ingest.label_col": "sentiment", "optimize.n_trials": 2,
        "train.tfidf.min_df": 1, "train.tfidf.C": 4.0,  # C set: optimize pins it (a tag)
        "evaluate.bootstrap_samples": 20})
    isolate_env(monkeypatch, root)
    saved = mlflow.get_tracking_uri()
    yield Project(root)
    mlflow.set_tracking_uri(saved)
    mlflow.set_registry_uri(saved)


def _stages(project: Project) -> list[str]:
    from textloop.pipeline.dag import stage_names

    return stage_names(project.root)


def _parent(project: Project) -> str:
    from mlflow import MlflowClient

    return MlflowClient().create_run(tracking.setup(project), run_name="lifecycle").info.run_id


def _artifacts(client, run_id: str, where: Path, path: str = "") -> dict[str, bytes]:
    """Every artifact of a run: relative path -> content."""
    out = {}
    for item in client.list_artifacts(run_id, path or None):
        if item.is_dir:
            out.update(_artifacts(client, run_id, where, item.path))
        else:
            local = client.download_artifacts(run_id, item.path, str(where))
            out[item.path] = Path(local).read_bytes()
    return out


def _tree(project: Project, parent: str, where: Path) -> dict[str, dict]:
    """The runs nested under `parent` (children and grandchildren), by name: what each logged."""
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = tracking.setup(project)
    out, todo = {}, [parent]
    while todo:
        pid = todo.pop()
        for run in client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{pid}'"):
            rid = run.info.run_id
            history = sorted((k, None if "seconds" in k else m.value, m.step)  # a timing
                             for k in run.data.metrics for m in client.get_metric_history(rid, k))
            assert run.info.start_time <= run.info.end_time
            out[run.info.run_name] = {
                "parent": client.get_run(pid).info.run_name,
                "status": run.info.status, "params": run.data.params, "metrics": history,
                "tags": {k: v for k, v in run.data.tags.items() if k not in PLACE},
                "artifacts": _artifacts(client, rid, where / rid)}
            todo.append(rid)
    return out


@pytest.mark.slow  # every stage twice in-process (~1 CPU-minute on the loaded machine)
def test_a_recorded_stage_run_is_logged_as_the_stage_would_log_it(project, monkeypatch, tmp_path):
    monkeypatch.delenv(tracking.RECORDS_ENV, raising=False)
    live = _parent(project)
    monkeypatch.setenv(tracking.PARENT_ENV, live)
    from textloop.pipeline.stages import run_stage

    for name in _stages(project):  # dvc.yaml order (this folder is no DVC repo)
        run_stage(name, project)
    monkeypatch.delenv(tracking.PARENT_ENV)

    flow = _parent(project)
    logged = {}
    with flow_records(project, flow) as folder:
        assert tracking.recorded_runs_folder() == folder
        for name in _stages(project):
            run_stage(name, project)
            logged[name] = log_recorded(project, folder, name)
            assert log_recorded(project, folder, name) is None  # claimed: logged once
            assert list(folder.iterdir()) == []  # nothing left behind
    assert not folder.parent.exists() and tracking.recorded_runs_folder() is None
    assert logged["sources"] is None and all(logged[s] for s in _stages(project)[1:])

    want, got = _tree(project, live, tmp_path / "a"), _tree(project, flow, tmp_path / "b")
    assert set(got) == set(want)
    assert {"train sample", "optimize trial 0 sample", "optimize trial 1 sample"} <= set(got)
    assert got["optimize trial 1 sample"]["parent"] == "optimize sample"
    assert got["label sample"]["tags"]["textloop.stage"] == "label"
    assert "optimize.pinned.C" in got["optimize sample"]["tags"]
    assert {"plots/confusion_matrix.png", "plots/reliability.png", "slices.json",
            "classification_report.json"} <= set(got["evaluate sample"]["artifacts"])
    for name, run in want.items():
        for field, value in run.items():
            assert got[name][field] == value, (name, field, _differ(got[name][field], value))


def _differ(got: object, want: object) -> object:
    """What differs, for the assertion message: the items one side has and the other lacks."""
    if isinstance(got, dict) and isinstance(want, dict):
        got, want = set(got.items()), set(want.items())
    if isinstance(got, (list, set)) and isinstance(want, (list, set)):
        return {"only logged by the flow": set(got) - set(want),
                "only logged live": set(want) - set(got)}
    return got, want


def test_a_failed_stage_is_logged_failed_and_a_killed_one_not_at_all(project, monkeypatch):
    from mlflow import MlflowClient

    parent = _parent(project)
    with flow_records(project, parent) as folder:
        with pytest.raises(RuntimeError), tracking.stage_run(project, "clean") as run:
            run.numbers({"rows": 3}, "clean.")
            raise RuntimeError("disk full")
        run_id = log_recorded(project, folder, "clean")
        (folder / "shard.files").mkdir()  # a stage killed before its run ended: no record
        assert log_recorded(project, folder, "shard") is None
    got = MlflowClient().get_run(run_id)
    assert (got.info.status, got.info.run_name, got.data.metrics) == (
        "FAILED", "clean sample", {"clean.rows": 3.0})
    assert got.data.tags["mlflow.parentRunId"] == parent


def test_a_stage_process_in_the_flow_never_imports_mlflow(project, tmp_path):
    from textloop.pipeline.stages import run_stage

    for name in ("sources", "ingest"):
        run_stage(name, project)
    records = tmp_path / "records"
    records.mkdir()
    code = ("import sys, runpy; sys.argv = ['textloop', 'stage', 'clean']\n"
            "try:\n    runpy.run_module('textloop', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n")
    env = {**os.environ, tracking.RECORDS_ENV: str(records), tracking.PARENT_ENV: "p" * 32}
    proc = subprocess.run([sys.executable, "-c", code], cwd=project.root, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    record = json.loads((records / "clean.json").read_text())
    assert (record["parent"], record["run"]["name"], record["run"]["status"]) == (
        "p" * 32, "clean sample", "FINISHED")
