"""Kill drill: `textloop run`, SIGKILL of its whole process group (flow, temporary
Prefect server, DVC stage) while a model stage runs, then `textloop run` again: the second run
starts at once (the dead holder's OS lock died with it), marks the first run FAILED in MLflow
and Crashed in Prefect, completes, and `textloop status` shows it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.e2e_project import isolate_env, make_project, sample_csv

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAGE_LINE = "Running stage '"


def cli_env() -> dict[str, str]:
    """This checkout's code and CLI; no Prefect server configured (each run starts its own
    temporary one, the case where the old global concurrency slot stayed taken forever)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TEXTLOOP_"))}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # a loaded test machine
    return env


class Watched:
    """A `textloop` command in its own process group; its stderr lines kept with the time
    each arrived, and the first start time of every DVC stage."""

    def __init__(self, root: Path, *args: str) -> None:
        self.lines: list[str] = []
        self.out: list[str] = []
        self.stage_started: dict[str, float] = {}
        self.proc = subprocess.Popen([str(BIN / "textloop"), *args], cwd=root, env=cli_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, errors="replace", start_new_session=True)
        self.readers = [threading.Thread(target=self._read_err, daemon=True),
                        threading.Thread(target=lambda: self.out.extend(self.proc.stdout),
                                         daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if STAGE_LINE in line:
                name = line.split(STAGE_LINE, 1)[1].split("'", 1)[0]
                self.stage_started.setdefault(name, time.monotonic())

    def wait_for_stage(self, names: set[str], timeout: float) -> str:
        """Bounded polling until one of `names` started (or the process ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if started := names & self.stage_started.keys():
                return started.pop()
            time.sleep(0.05)
        raise AssertionError(f"no stage of {names} started; output tail:\n"
                             + "".join(self.lines[-30:]))

    def finish(self, timeout: float) -> tuple[int, str]:
        """Exit code and stdout (each stream has one reader thread: nothing read twice)."""
        self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return self.proc.returncode, "".join(self.out)


def group_gone(pgid: int, timeout: float) -> bool:
    """Bounded polling until no process is left in the group."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(300)
def test_a_run_killed_during_training_never_blocks_the_next(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from textloop.core.layout import Project
    from textloop.core.lock import read_record
    from textloop.pipeline.status import last_run, status

    root = make_project(tmp_path / "proj", "sample.csv")
    sample_csv(root / "sample.csv", 450)
    project = Project(root)
    lock = project.workspace_lock()

    # --verbose: DVC's "Running stage" lines tell the drill when train starts
    first = Watched(root, "run", "--verbose", "--label-col", "sentiment")
    try:
        killed_in = first.wait_for_stage({"train", "optimize"}, timeout=150)
        holder = read_record(lock.record_path)
        running = json.loads(project.last_run_path.read_text())
    finally:
        t_kill = time.monotonic()
        if first.proc.poll() is None:
            os.killpg(first.proc.pid, signal.SIGKILL)  # flow, temp Prefect server, DVC, stage
        first.finish(timeout=30)
    assert group_gone(first.proc.pid, timeout=10)  # nothing of the first run survived
    assert running["state"] == "running" and running["pid"] == first.proc.pid
    assert holder["pid"] == first.proc.pid and holder["flow_run_id"] == running["flow_run_id"]
    killed_mlflow = holder["mlflow_run_id"]
    assert running["mlflow_run_id"] == killed_mlflow
    assert last_run(project)["state"] == "crashed"  # the lock died with the process

    second = Watched(root, "run", "--verbose", "--json")
    rc, out = second.finish(timeout=180)
    log = "".join(second.lines)
    assert rc == 0, log[-3000:]
    first_stage = min(second.stage_started.values())
    assert "held by" not in log  # the second run never waited on the dead one
    assert f"the previous holder, pid {first.proc.pid} on" in log  # …and said whom it replaced

    record = json.loads(out[out.index("{"):])
    print(f"\nkilled in {killed_in}; kill -> second run's first stage started "
          f"{first_stage - t_kill:.1f} s (its lock wait {record['lock_wait_s']} s); -> train "
          f"started {second.stage_started.get('train', float('nan')) - t_kill:.1f} s")
    assert record["state"] == "completed" and record["lock_wait_s"] < 2
    recovered = record["recovered"]
    assert recovered["holder"]["pid"] == first.proc.pid
    assert killed_mlflow in recovered["mlflow_failed"] and recovered["prefect_crashed"] is True
    client = MlflowClient(project.tracking_uri)
    killed = client.get_run(killed_mlflow)
    assert killed.info.status == "FAILED"
    exp = [killed.info.experiment_id]
    assert client.search_runs(exp, "attributes.status = 'RUNNING'") == []  # stage runs too
    saved = json.loads(project.last_run_path.read_text())
    assert saved["state"] == "completed" and saved["flow_run_id"] == record["flow_run_id"]
    assert not lock.record_path.exists() and lock.holder() is None

    isolate_env(monkeypatch, root)  # what `textloop status` sees, read in this process
    shown = status(project)["last_run"]
    assert (shown["state"], shown["flow_run_id"]) == ("completed", record["flow_run_id"])
    assert shown["recovered"]["holder"]["flow_run_id"] == running["flow_run_id"]
