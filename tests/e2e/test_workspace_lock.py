"""The crash-safe lock behind the workspace and the retrain single-flight: a holder killed with
SIGKILL never blocks the next acquirer (who gets its record back), a live holder makes the next
one wait and time out naming it; a run record left `running` by a dead run reads `crashed`; the
dead run's MLflow runs are marked FAILED."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textloop.core.layout import Project
from textloop.core.lock import HolderLock, LockTimeout, read_record, write_json_atomic

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys
from pathlib import Path
from textloop.core.layout import Project
from textloop.core.lock import HolderLock
from textloop.loop.prefect_api import single_flight_lock
kind, where = sys.argv[1], Path(sys.argv[2])
if kind == "retrain":
    lock = single_flight_lock(Project(where), "textloop-retrain", 0)
else:
    lock = HolderLock(where, "workspace", 0)
lock.acquire(flow_run_id="flow-run-1", mlflow_run_id="mlflow-run-1")
print("held", lock.record["started_at"], flush=True)
sys.stdin.read()  # hold until killed (or the test closes stdin)
"""


def start_holder(kind: str, where: Path) -> tuple[subprocess.Popen, str]:
    """A separate process that takes the lock and holds it; returns it and its started_at."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(where)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()  # EOF ("") if the child failed: the assert says so
    assert line[:1] == ["held"], f"holder did not take the lock (exit {proc.poll()})"
    return proc, line[1]


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no finally blocks, no atexit, no release, the holder record stays behind."""
    os.kill(proc.pid, signal.SIGKILL)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    (tmp_path / "params.yaml").write_text("run:\n  lock_timeout_s: 5\n")
    return Project(tmp_path)


@pytest.mark.timeout(60)
def test_a_killed_holder_frees_the_lock_at_once_and_is_reported(tmp_path):
    path = tmp_path / "locks" / "workspace.lock"
    proc, since = start_holder("workspace", path)
    assert HolderLock(path, "workspace", 0).holder()["pid"] == proc.pid
    kill(proc)
    start = time.monotonic()
    lock = HolderLock(path, "workspace", timeout_s=2)
    stale = lock.acquire(flow_run_id="flow-run-2")
    waited = time.monotonic() - start
    proc.wait(timeout=10)
    assert waited < 2
    assert stale is not None and lock.stale == stale
    assert (stale["pid"], stale["started_at"]) == (proc.pid, since)
    assert (stale["flow_run_id"], stale["mlflow_run_id"]) == ("flow-run-1", "mlflow-run-1")
    assert read_record(lock.record_path)["pid"] == os.getpid()
    assert read_record(lock.record_path)["flow_run_id"] == "flow-run-2"
    lock.release()
    assert not lock.record_path.exists() and lock.holder() is None
    again = HolderLock(path, "workspace", 0)
    assert again.acquire() is None  # a clean release leaves no trace of a crash
    again.release()


@pytest.mark.timeout(60)
def test_a_live_holder_makes_the_next_acquire_wait_and_time_out_naming_it(tmp_path):
    path = tmp_path / "workspace.lock"
    proc, since = start_holder("workspace", path)
    messages: list[str] = []
    try:
        lock = HolderLock(path, "workspace", timeout_s=0.5, notify=messages.append)
        start = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            lock.acquire()
        waited = time.monotonic() - start
    finally:
        proc.stdin.close()  # the holder exits normally
        proc.wait(timeout=10)
    assert 0.5 <= waited < 5
    holder = f"pid {proc.pid} on {os.uname().nodename} (flow run flow-run-1) since {since}"
    assert messages == [f"workspace held by {holder}; waiting up to 0.5 s…"]
    assert str(err.value).startswith(f"workspace held by {holder}; gave up after 0.")
    assert isinstance(err.value, TimeoutError)


@pytest.mark.timeout(60)
def test_the_retrain_lock_of_a_killed_process_is_taken_by_the_policy_at_once(project):
    from textloop.core.config import Params
    from textloop.loop import db
    from textloop.loop import retrain_policy as pol
    from textloop.loop.prefect_api import single_flight_lock

    proc, _ = start_holder("retrain", project.root)
    kill(proc)
    started: list[dict] = []
    ctx = pol.PolicyContext(
        engine=db.open_db(db.default_url(project.state)), params=Params(),
        starter=lambda parameters: started.append(parameters) or "flow-run-2",
        exporter=lambda rows: project.root / "unused.parquet", active_runs=list,
        lock=lambda: single_flight_lock(project, "textloop-retrain", 2))
    start = time.monotonic()
    decision = pol.run_policy(ctx, None, trigger="manual")
    waited = time.monotonic() - start
    proc.wait(timeout=10)
    assert waited < 2
    assert decision.fire and decision.flow_run_id == "flow-run-2" and started == [{}]
    assert single_flight_lock(project, "textloop-retrain", 0).holder() is None


def test_a_run_record_left_running_by_a_dead_run_reads_crashed(project):
    from textloop.pipeline.status import last_run

    assert last_run(project) is None
    project.state.mkdir(parents=True)
    write_json_atomic(project.last_run_path, {"state": "running", "flow_run_id": "f1"})
    assert last_run(project)["state"] == "crashed"  # nobody holds the workspace lock
    lock = project.workspace_lock()
    lock.acquire(flow_run_id="f1")
    try:
        assert last_run(project)["state"] == "running"  # its holder is alive
    finally:
        lock.release()
    write_json_atomic(project.last_run_path, {"state": "completed"})
    assert last_run(project)["state"] == "completed"


@pytest.fixture
def mlflow_uri_restored():
    import mlflow

    yield
    mlflow.set_tracking_uri(None)  # tracking.setup sets it process-wide


def test_the_dead_runs_mlflow_runs_are_failed_finished_ones_left_alone(project, monkeypatch,
                                                                       mlflow_uri_restored):
    from mlflow import MlflowClient

    from flows.lifecycle import recover_crashed
    from textloop.pipeline import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
    project.state.mkdir(parents=True)
    exp = tracking.setup(project)
    client = MlflowClient(project.tracking_uri)
    parent = client.create_run(exp).info.run_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    grandchild = client.create_run(exp, tags={"mlflow.parentRunId": child}).info.run_id
    done = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(done, status="FINISHED")
    holder = {"pid": 1, "host": "h", "started_at": "T", "mlflow_run_id": parent,
              "flow_run_id": "not-a-flow-run-id"}
    out = recover_crashed(project, holder, "flow-run-2")
    assert sorted(out["mlflow_failed"]) == sorted([parent, child, grandchild])
    assert out["prefect_crashed"] is False  # not a flow run id: logged, not raised
    status = {r: client.get_run(r).info.status for r in (parent, child, grandchild, done)}
    assert status == {parent: "FAILED", child: "FAILED", grandchild: "FAILED", done: "FINISHED"}
    assert client.get_run(parent).data.tags["textloop.crashed"] == (
        "holder pid 1 on h (flow run not-a-flow-run-id) since T died; found by flow run flow-run-2")


@pytest.mark.timeout(120)
def test_a_run_waiting_on_a_live_run_gives_up_naming_it_and_leaves_its_state_alone(
        tmp_path, monkeypatch):
    from flows.lifecycle import lifecycle
    from tests.support.e2e_project import isolate_env, make_project

    root = make_project(tmp_path / "proj", "sample.csv")
    isolate_env(monkeypatch, root)
    project = Project(root)
    params_before = project.params_path.read_text()
    proc, since = start_holder("workspace", project.lock_path("workspace"))
    try:
        with pytest.raises(LockTimeout, match=f"^workspace held by pid {proc.pid} on .* since "
                                              f"{re.escape(since)}; gave up after 0.[0-9] s"):
            lifecycle.fn(label_col="sentiment", overrides={"run.lock_timeout_s": 0.3})
        assert project.workspace_lock().holder()["pid"] == proc.pid  # still the live holder's
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    assert project.params_path.read_text() == params_before  # nothing edited without the lock
    assert not project.last_run_path.exists()  # the holder's record is not overwritten
