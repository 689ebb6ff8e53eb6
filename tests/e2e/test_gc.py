"""Clean-up: a killed run is marked crashed (MLflow FAILED, Prefect Crashed); gc keeps every
protected version loadable and its data in the DVC cache, removes the rest, and a dry run
removes nothing but reports the same objects and bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.support import fixtures as testing
from tests.support.receivers import webhook_receiver
from textloop.core.layout import Project
from textloop.loop import gc

MODEL = "gc-model"


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(f"deploy:\n  model_name: {MODEL}\ngc:\n  keep_versions: 1\n")
    proj = Project(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proj.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", proj.tracking_uri)
    proj.state.mkdir(parents=True)
    yield proj
    mlflow.set_tracking_uri(None)  # tracking.setup sets it process-wide
    mlflow.set_registry_uri(None)


def _lifecycle_run(client, exp: str, flow_run_id: str) -> str:
    return client.create_run(exp, tags={"textloop.flow": "lifecycle",
                                        "prefect.flow_run_id": flow_run_id}).info.run_id


def test_a_killed_run_is_marked_crashed(project):
    from mlflow import MlflowClient

    from textloop.pipeline import tracking

    exp = tracking.setup(project)
    client = MlflowClient()
    killed = _lifecycle_run(client, exp, "flow-run-killed")
    stage = client.create_run(exp, tags={"mlflow.parentRunId": killed}).info.run_id
    orphan = _lifecycle_run(client, exp, "flow-run-orphan")  # its holder record was lost
    done = _lifecycle_run(client, exp, "flow-run-done")
    client.set_terminated(done, "FINISHED")
    code = ("import sys,time; from pathlib import Path; from textloop.core.layout import Project;"
            f"lock = Project(Path({str(project.root)!r})).workspace_lock(0);"
            f"lock.acquire(flow_run_id='flow-run-killed', mlflow_run_id={killed!r});"
            "print('locked', flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"locked"
    marked = []
    busy = gc.reap_crashed(project, mark=lambda run, msg: marked.append(run) or True)
    assert "a live run holds the workspace" in busy["skipped"] and marked == []
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with webhook_receiver() as (url, got):
        with (project.root / "params.yaml").open("a") as fh:
            fh.write(f"alerts:\n  webhooks: [{{url: '{url}', events: [run_crashed]}}]\n")
        out = gc.reap_crashed(project, mark=lambda run, msg: marked.append(run) or True)
    assert [json.loads(i["body"])["event"] for i in got.items] == ["run_crashed"]
    assert sorted(out["mlflow_failed"]) == sorted([killed, stage, orphan])
    assert marked == ["flow-run-killed", "flow-run-orphan"]
    status = {r: client.get_run(r).info.status for r in (killed, stage, orphan, done)}
    assert status == {killed: "FAILED", stage: "FAILED", orphan: "FAILED", done: "FINISHED"}
    assert project.workspace_lock(0).holder() is None  # gc released it
    assert gc.reap_crashed(project, mark=lambda *a: True) == {"mlflow_failed": []}


def _dvc_versions(root: Path, n: int) -> list[str]:
    """n versions of one DVC-tracked file; returns their md5s (the last one is the workspace)."""
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=True)
    hashes = []
    for i in range(n):
        (root / "data.txt").write_text(f"version {i}\n" * (1000 * (i + 1)))
        with Repo(str(root)) as repo:
            repo.add(str(root / "data.txt"))
        md5 = (root / "data.txt.dvc").read_text().split("md5: ")[1].split()[0]
        hashes.append(md5)
    return hashes


@pytest.mark.slow  # three registered versions + DVC: ~30 s on the loaded machine
def test_gc_keeps_every_protected_version_loadable_and_reclaims_the_rest(project):
    from mlflow import MlflowClient

    from textloop.pipeline import tracking

    hashes = _dvc_versions(project.root, 4)  # v1 champion, v2 unprotected, v3 newest; 4: workspace
    tracking.setup(project)
    folder = testing.train_tiny(testing.synthetic(60, seed=1), project.root / "m")
    for i, alias in enumerate(("champion", None, None)):
        testing.register_champion(folder, MODEL, {"data_hash": hashes[i]}, alias=alias)
    client = MlflowClient()
    with mlflow.start_run() as deleted:
        mlflow.log_text("x" * 5000, "big.txt")
    client.delete_run(deleted.info.run_id)
    cache = project.root / ".dvc" / "cache" / "files" / "md5"
    obj = {h: cache / h[:2] / h[2:] for h in hashes}
    dry = gc.collect(project, dry_run=True)
    assert dry.protected_versions == {"1": "champion", "3": "newest"}
    assert (dry.dvc_objects, dry.dvc_bytes) == (1, obj[hashes[1]].stat().st_size)
    assert dry.mlflow_runs == [deleted.info.run_id] and dry.mlflow_bytes == 5000
    assert all(p.exists() for p in obj.values())  # a dry run removes nothing
    real = gc.collect(project)
    assert real.to_dict() | {"dry_run": True} == dry.to_dict()
    assert [h for h, p in obj.items() if not p.exists()] == [hashes[1]]
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):  # purged by mlflow gc, artifacts included
        client.get_run(deleted.info.run_id)
    for version in ("1", "2", "3"):  # registered models live in MLflow: all still load
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
        assert model.predict(pd.DataFrame({"text": ["great good"]}))["label"][0] == "pos"
    again = gc.collect(project, dry_run=True)
    assert (again.dvc_objects, again.mlflow_runs) == (0, [])


def test_a_rwlock_table_corrupted_by_the_killed_run_is_removed_a_valid_one_kept(project):
    """The kill drill's fault: SIGKILL while DVC rewrote .dvc/tmp/rwlock left half a JSON file
    and every later `dvc repro` failed ("JSON structure is corrupted")."""
    from textloop.pipeline.dvc import RWLOCK, repair_rwlock

    path = project.root / RWLOCK
    path.parent.mkdir(parents=True)
    assert repair_rwlock(project.root) is False  # no table: nothing to do
    path.write_text('{"read": {}, "write": {"data/02_clean": {"pid": 99999999, "cmd": "dvc')
    out = gc.recover_crashed(project, {"pid": 99999999, "flow_run_id": "none"}, "test",
                             mark=lambda *a: True)
    assert out["dvc_rwlock_repaired"] is True and not path.exists()
    path.write_text('{"read": {}, "write": {}}')
    assert repair_rwlock(project.root) is False and path.exists()
