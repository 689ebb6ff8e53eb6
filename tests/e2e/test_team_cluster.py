"""The team profile on real servers (127.0.0.1): PostgreSQL, an S3 store (moto), MLflow and
Prefect on them, one stack shared by the module (kept on one xdist worker: pyproject's
`--dist loadscope`).

- two machines: folder A (git + DVC) submits a lifecycle run to the work pool; a worker in
  folder B (its own clone and DVC cache, only the server URLs and the password in common)
  executes it; folder C (a fresh clone + `textloop pull`) holds the same data, A's `status`
  names the champion, an API started in C serves it.
- kill: SIGKILL the worker and its flow run mid-run; the workspace lock (a PostgreSQL advisory
  lock) is free at once, the rerun through a new worker completes and marks the killed run
  Crashed.
- replicas: two API processes share the PostgreSQL prediction log (every answered text logged
  exactly once) and both hot-reload when the alias moves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest

from tests.support.fixtures import free_ports
from tests.support.team import TeamStack, team_stack, wait_until

pytestmark = [pytest.mark.xdist_group("team_cluster"), pytest.mark.e2e]

POOL = "tl-test"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _postgres_missing() -> str | None:
    """Why the PostgreSQL server binaries are unusable here, else None (CI must have them)."""
    from textloop.core.errors import UserError
    from textloop.services import pg_bindir

    try:
        pg_bindir()
    except UserError as exc:
        return str(exc)
    return None


if _postgres_missing() and not os.environ.get("CI"):
    pytest.skip(f"PostgreSQL server binaries missing: {_postgres_missing()}",
                allow_module_level=True)


@dataclass
class Cluster:
    """The module's stack, the projects A (submitter) and B (worker's checkout), the env."""

    stack: TeamStack
    a: Path
    b: Path
    env: dict[str, str]
    worker: subprocess.Popen | None = None

    def run(self, folder: Path, *args: str, check: bool = True,
            timeout: float = 240) -> subprocess.CompletedProcess:
        """`python -m textloop ARGS` in a folder, as another machine's shell would."""
        done = subprocess.run([sys.executable, "-m", "textloop", *args], cwd=folder,
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and done.returncode:
            raise AssertionError(f"textloop {' '.join(args)} in {folder.name}: "
                                 f"{done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def start_worker(self) -> subprocess.Popen:
        """`textloop worker` in B, its output in B's log; ready when it polls the pool."""
        log = (self.stack.root / "worker.log").open("ab")
        self.worker = subprocess.Popen([sys.executable, "-m", "textloop", "worker"], cwd=self.b,
                                       env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        wait_until(lambda: self.online_workers() > 0, 120, "worker online", self.worker)
        return self.worker

    def online_workers(self) -> int:
        """Workers of the pool the Prefect server sees ONLINE."""
        resp = httpx.post(f"{self.stack.prefect_api_url}/work_pools/{POOL}/workers/filter",
                          json={}, timeout=5)
        return sum(w["status"] == "ONLINE" for w in resp.json()) if resp.is_success else 0

    def submit(self, overrides: dict[str, Any] | None = None) -> str:
        """A starts a lifecycle run on the pool (the policy's own call); returns its id."""
        code = ("import json, sys\n"
                "from textloop.core.layout import configure, find_project\n"
                "configure(find_project())\n"
                "from textloop.loop.prefect_api import start_deployment\n"
                "print(start_deployment('lifecycle/lifecycle', json.loads(sys.argv[1]), "
                "['test']))\n")
        params = {"overrides": overrides} if overrides else {}
        done = subprocess.run([sys.executable, "-c", code, json.dumps(params)], cwd=self.a,
                              env=self.env, capture_output=True, text=True, timeout=120,
                              check=True)
        return done.stdout.strip().splitlines()[-1]

    def state(self, run_id: str) -> str:
        """A flow run's state type (REST API)."""
        resp = httpx.get(f"{self.stack.prefect_api_url}/flow_runs/{run_id}", timeout=5)
        resp.raise_for_status()
        return resp.json()["state"]["type"]

    def wait_final(self, run_id: str, timeout_s: float = 240) -> str:
        """Poll until the run ends; its final state type."""
        wait_until(lambda: self.state(run_id) in FINAL, timeout_s, f"flow run {run_id}",
                   self.worker)
        return self.state(run_id)

    def worker_log(self) -> str:
        """The last lines the workers wrote (for failure messages)."""
        path = self.stack.root / "worker.log"
        return path.read_text(errors="replace")[-6000:] if path.is_file() else ""


def _kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL a process and every descendant (collected first); their pids."""
    try:
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(30)
    psutil.wait_procs(victims, timeout=30)
    return [p.pid for p in victims]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The stack; project A (a `textloop init` project on the team profile, its sample data
    committed) and B, a clone of A's git repo with a worker running in it."""
    from tests.support.e2e_project import make_project, sample_csv

    with team_stack() as stack:
        a = make_project(stack.root / "A", "sample.csv", **stack.backend(POOL))
        sample_csv(a / "sample.csv", 240)
        for cmd in (["git", "add", "-f", "sample.csv"], ["git", "commit", "-qm", "sample"]):
            subprocess.run(cmd, cwd=a, check=True)
        b = stack.root / "B"
        subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)
        env = {**os.environ, "PGPASSWORD": stack.password, "PYTHONUNBUFFERED": "1"}
        for key in ("TEXTLOOP_PROJECT", "PREFECT_API_URL", "MLFLOW_TRACKING_URI",
                    "MLFLOW_REGISTRY_URI", "PREFECT_HOME"):
            env.pop(key, None)
        env["AWS_ACCESS_KEY_ID"] = env["AWS_SECRET_ACCESS_KEY"] = "testing"
        cl = Cluster(stack, a, b, env)
        cl.start_worker()
        try:
            yield cl
        finally:
            if cl.worker is not None:
                _kill_tree(cl.worker)


def _tree_digest(path: Path) -> str:
    """sha256 over a file's bytes, or a folder's relative paths and bytes."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else "").encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_two_machines_submit_on_a_run_on_b_reproduce_on_c(cluster: Cluster) -> None:
    from textloop.pipeline.remote import cached_outs

    run_id = cluster.submit()
    state = cluster.wait_final(run_id)
    assert state == "COMPLETED", cluster.worker_log()
    record = json.loads((cluster.b / ".textloop" / "last_run.json").read_text())
    assert record["flow_run_id"] == run_id and record["state"] == "completed"
    assert record["dvc_push"]["pushed"] > 0  # B's outputs are on the remote
    assert not (cluster.a / "dvc.lock").exists()  # A ran nothing
    doctor = cluster.run(cluster.b, "doctor", check=False).stdout  # no API runs here: exit 1
    lines = {ln.split()[1]: ln for ln in doctor.splitlines() if ln[:3] in ("ok ", "BAD")}
    assert lines["dvc"].startswith("ok ") and "bucket textloop" in lines["dvc"], doctor
    assert lines["pool"].startswith("ok ") and "process pool, 1 worker(s) online" in lines["pool"]

    c = cluster.stack.root / "C"
    subprocess.run(["git", "clone", "-q", str(cluster.a), str(c)], check=True)
    cluster.run(c, "pull")
    outs_b, outs_c = cached_outs(cluster.b), cached_outs(c)
    assert outs_c == outs_b and len(outs_b) >= 8
    for rel in outs_b:
        assert (c / rel).exists(), rel
        assert _tree_digest(c / rel) == _tree_digest(cluster.b / rel), rel

    status = json.loads(cluster.run(cluster.a, "status", "--json").stdout)
    assert status["champion"]["version"] == "1"
    assert status["champion"]["run_id"] == record["mlflow_run_id"]

    port = free_ports(1)[0]
    api = subprocess.Popen([sys.executable, "-m", "textloop", "serve", "--port", str(port)],
                           cwd=c, env=cluster.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ok(f"{base}/health"), 120, "API in C", api)
        answer = httpx.post(f"{base}/predict", json={"texts": ["what a lovely day"]},
                            timeout=30).json()
        assert answer["model"]["version"] == "1", answer
        labels = set(pd.read_csv(cluster.a / "sample.csv")["sentiment"])
        assert answer["predictions"][0]["label"] in labels, answer
    finally:
        _kill_tree(api)


def _ok(url: str) -> bool:
    """GET answers 2xx."""
    try:
        return httpx.get(url, timeout=3).is_success
    except httpx.HTTPError:
        return False


def test_killed_worker_frees_the_workspace_and_a_rerun_completes(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from textloop.core.backend import shared_lock
    from textloop.core.layout import WORKSPACE_LOCK, Project

    monkeypatch.setenv("PGPASSWORD", cluster.stack.password)
    b = Project(cluster.b)
    lock = shared_lock(b.params().backend, b.layout.root, WORKSPACE_LOCK)
    assert lock is not None and lock.holder() is None

    change = {"train.tfidf.max_features": 19000}  # train, optimize, evaluate, deploy run again
    victim = cluster.submit(change)
    wait_until(lambda: victim in (lock.holder() or ""), 180, "the run holding the workspace",
               cluster.worker)
    assert cluster.state(victim) == "RUNNING"
    assert cluster.worker is not None
    killed = _kill_tree(cluster.worker)
    assert len(killed) >= 2  # the worker and its flow-run process at least
    cluster.worker = None
    wait_until(lambda: lock.holder() is None, 30, "the advisory lock freed by the kill")
    assert cluster.state(victim) == "RUNNING"  # Prefect alone never learns the worker died

    cluster.start_worker()
    rerun = cluster.submit(change)
    assert cluster.wait_final(rerun) == "COMPLETED", cluster.worker_log()
    record = json.loads((cluster.b / ".textloop" / "last_run.json").read_text())
    assert record["flow_run_id"] == rerun and record["lock_wait_s"] < 10
    assert record["recovered"]["holder"]["flow_run_id"] == victim  # the takeover found it ...
    assert cluster.state(victim) == "CRASHED"  # ... and marked it
    assert lock.holder() is None


def test_two_api_replicas_share_the_log_and_both_hot_reload(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mlflow
    import sqlalchemy as sa

    from tests.support.fixtures import register_champion, synthetic, train_tiny
    from textloop.core.layout import Project
    from textloop.loop import db
    from textloop.pipeline.registry import served_model

    name = served_model(Project(cluster.a))[0]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(key, cluster.stack.mlflow_url)
    mlflow.set_tracking_uri(cluster.stack.mlflow_url)
    mlflow.set_registry_uri(cluster.stack.mlflow_url)
    try:
        mlflow.set_experiment("team-replicas")
        first = register_champion(train_tiny(synthetic(60, 1), tmp_path / "m1"), name)
        ports = free_ports(2)
        apis = [subprocess.Popen([sys.executable, "-m", "textloop", "serve", "--port", str(p)],
                                 cwd=cluster.a, env=cluster.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
                for p in ports]
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        try:
            for base, api in zip(bases, apis, strict=True):
                wait_until(lambda b=base: _version(b) == first, 120, f"replica {base}", api)
            texts = [f"replica check {i} good movie" for i in range(40)]

            def post(i: int) -> str:
                """Half the texts to each replica, concurrently."""
                return httpx.post(f"{bases[i % 2]}/predict", json={"text": texts[i]},
                                  timeout=30).json()["predictions"][0]["id"]

            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(post, range(len(texts))))
            engine = sa.create_engine(cluster.stack.db_url.replace(
                "textloop@", f"textloop:{cluster.stack.password}@"))
            with engine.connect() as conn:
                rows = conn.execute(sa.select(db.predictions.c.id, db.predictions.c.text).where(
                    db.predictions.c.text.like("replica check %"))).all()
            engine.dispose()
            assert sorted(r.text for r in rows) == sorted(texts)  # each exactly once
            assert sorted(r.id for r in rows) == sorted(ids)

            second = register_champion(train_tiny(synthetic(60, 2), tmp_path / "m2"), name)
            assert int(second) == int(first) + 1
            for base, api in zip(bases, apis, strict=True):
                wait_until(lambda b=base: _version(b) == second, 60, f"{base} reload", api)
        finally:
            for api in apis:
                _kill_tree(api)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def _version(base: str) -> str | None:
    """The version an API serves, None while it has none or is not up."""
    try:
        resp = httpx.get(f"{base}/model", timeout=3)
    except httpx.HTTPError:
        return None
    return str(resp.json().get("version")) if resp.is_success else None


def test_workspace_lock_holds_across_checkouts(cluster: Cluster, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from textloop.core.layout import Project
    from textloop.core.lock import LockTimeout

    monkeypatch.setenv("PGPASSWORD", cluster.stack.password)
    other = tmp_path / "elsewhere"  # another machine: its own folder and OS lock file
    shutil.copytree(cluster.a, other, ignore=shutil.ignore_patterns(".textloop"))
    mine, theirs = Project(cluster.a).workspace_lock(0), Project(other).workspace_lock(0.6)
    mine.acquire(flow_run_id="run-on-a")
    try:
        assert theirs.holder() == {"holder": "textloop workspace run-on-a",
                                   "host": "another machine"}
        with pytest.raises(LockTimeout, match="textloop workspace run-on-a"):
            theirs.acquire(flow_run_id="run-elsewhere")
    finally:
        mine.release()
    assert theirs.acquire(flow_run_id="run-elsewhere") is None  # free once released
    theirs.release()
    assert mine.holder() is None


def test_an_object_missing_on_the_remote_is_one_clear_error(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from textloop.core.config import apply_overrides
    from textloop.core.errors import UserError
    from textloop.core.layout import Project
    from textloop.pipeline import remote

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    folder = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(cluster.a), str(folder)], check=True)
    apply_overrides(folder / "params.yaml", {"backend.dvc_remote": "s3://textloop/empty"})
    (folder / "ghost.txt.dvc").write_text(  # a store pushed by nobody
        "outs:\n- md5: 0123456789abcdef0123456789abcdef\n  size: 5\n  hash: md5\n"
        "  path: ghost.txt\n")
    project = Project(folder)
    assert remote.cached_outs(folder) == {"ghost.txt": "0123456789abcdef0123456789abcdef"}
    with pytest.raises(UserError) as err:
        remote.pull_missing(project)
    message = str(err.value)
    assert "ghost.txt" in message and "\n" not in message, message
    assert (folder / ".dvc" / "config.local").read_text().count("s3://textloop/empty") == 1
