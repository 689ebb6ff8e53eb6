"""The Prefect server `textloop run` uses (textloop.cli.prefect_server): the project server that
outlives a run (reused, replaced when stale, one for concurrent runs, stopped when idle or by
`textloop down`) and the temporary one (`prefect.server_idle_minutes: 0`)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from textloop.cli import app, prefect_server
from textloop.cli.prefect_server import TemporaryServer
from textloop.core.errors import UserError
from textloop.core.layout import Project


def test_no_server_when_an_api_is_configured(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert prefect_server.start_early() is None


def test_a_server_that_dies_leaves_prefect_to_start_its_own(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    server = TemporaryServer(prefect_server._free_port())
    server.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    prefect_server.use(server)
    assert "PREFECT_API_URL" not in os.environ and server.process is None


@pytest.mark.slow
def test_the_early_server_answers_and_stops(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    server = TemporaryServer(prefect_server._free_port()).launch()
    try:
        prefect_server.use(server)


        assert os.environ["PREFECT_API_URL"] == server.api_url and server.healthy()
        process = server.process
    finally:
        server.stop()
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        if "prefect.context" in sys.modules:  # later tests must not see the stopped server
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
    assert server.process is None and process.poll() is not None


# ---- the project server: reused across runs, replaced when stale, stopped when idle or by down --

REPO = Path(__file__).resolve().parents[2]
RUN = """
import json, os, sys
from pathlib import Path
from textloop.cli import prefect_server
from textloop.core.layout import Project, configure
project = Project(Path(sys.argv[1]))
configure(project)
server = prefect_server.start_early(project)   # as `textloop run`: before Prefect is imported
from prefect import flow
from prefect.runtime import flow_run
prefect_server.use(server)

@flow(name="noop")
def noop() -> str:
    return str(flow_run.get_id())

print(json.dumps({"flow_run_id": noop(), "api_url": os.environ["PREFECT_API_URL"],
                  "reused": server.reused}))
"""


def _project_at(root: Path, idle_minutes: float) -> Project:
    """A minimal project folder (no stages) whose textloop.yaml sets prefect.server_idle_minutes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    settings = (REPO / "textloop.yaml").read_text()
    assert "server_idle_minutes: 30.0" in settings
    (root / "textloop.yaml").write_text(settings.replace("server_idle_minutes: 30.0",
                                                         f"server_idle_minutes: {idle_minutes}"))
    return Project(root)


def _env() -> dict[str, str]:
    """This checkout's code; no Prefect API configured, the idle time from params.yaml."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TEXTLOOP_"))}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # a loaded test machine
    return env


def _start_run(project: Project) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(project.root)], cwd=project.root,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _record(project: Project) -> dict | None:
    path = project.layout.prefect_server
    return json.loads(path.read_text()) if path.is_file() else None


def _flow_run_ids_in_db(project: Project) -> set[str]:
    """Flow run ids stored in the project's Prefect database (the SQLite file in PREFECT_HOME)."""
    with contextlib.closing(sqlite3.connect(project.layout.prefect_home / "prefect.db")) as db:
        return {str(uuid.UUID(str(row[0]))) for row in db.execute("SELECT id FROM flow_run")}


def _gone(pid: int, timeout_s: float) -> bool:
    """Bounded wait for a process to exit (reaped when it is our child)."""
    try:
        psutil.Process(pid).wait(timeout=timeout_s)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def _stop_whatever_is_left(project: Project) -> None:
    from textloop import services

    services.stop(project, prefect_server.NAME, timeout_s=10)


def test_idle_minutes_env_overrides_params_and_zero_means_temporary(tmp_path, monkeypatch):
    project = _project_at(tmp_path / "p", 30)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv(prefect_server.IDLE_ENV, raising=False)
    assert prefect_server.idle_minutes(project) == 30
    monkeypatch.setenv(prefect_server.IDLE_ENV, "0")  # what tests/conftest.py sets
    assert prefect_server.idle_minutes(project) == 0
    monkeypatch.setenv(prefect_server.IDLE_ENV, "soon")
    with pytest.raises(UserError, match="environment: prefect.server_idle_minutes: Input should "
                                        "be a valid number"):
        prefect_server.idle_minutes(project)


class _Started(Exception):
    """Stops the run once its Prefect server was asked for (nothing else is under test)."""


@pytest.mark.parametrize("idle", [0, 60])
def test_a_runs_set_reaches_the_prefect_server_it_starts_and_its_processes(tmp_path, monkeypatch,
                                                                          idle):
    """`textloop run --set prefect.server_idle_minutes=N` with 30 in textloop.yaml: the server
    that same run starts gets N (0: a temporary one), and so does any process the run starts."""
    project = _project_at(tmp_path / "p", 30)
    monkeypatch.chdir(project.root)
    for var in ("PREFECT_API_URL", "TEXTLOOP_PROJECT", prefect_server.IDLE_ENV):
        monkeypatch.delenv(var, raising=False)
    child = ("from pathlib import Path; from textloop.core.config import load_params; "
             "print(load_params(Path('params.yaml')).prefect.server_idle_minutes)")
    seen = []

    def started(kind: str, minutes: float) -> None:
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             check=True).stdout
        seen.append((kind, minutes, float(out)))
        raise _Started

    monkeypatch.setattr(prefect_server, "project_server", lambda _p, m: started("project", m))
    monkeypatch.setattr(TemporaryServer, "launch", lambda _self: started("temporary", 0.0))
    result = CliRunner().invoke(app, ["run", "--set", f"prefect.server_idle_minutes={idle}"])
    assert isinstance(result.exception, _Started), result.output
    assert seen == [("temporary" if idle == 0 else "project", float(idle), float(idle))]
    assert "TEXTLOOP_SET" not in os.environ  # the run's settings end with the run


def test_runs_share_one_project_server_a_stale_record_is_replaced_and_down_stops_it(tmp_path):
    project = _project_at(tmp_path / "p", 30)
    project.layout.pids.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stale = {"name": prefect_server.NAME, "pid": dead.pid, "api_url": "http://127.0.0.1:9/api",
             "create_time": psutil.Process(dead.pid).create_time(), "port": 9,
             "versions": prefect_server.versions()}
    project.layout.prefect_server.write_text(json.dumps(stale))
    dead.kill()  # a server killed with SIGKILL left its record behind
    dead.wait()
    try:
        first, second = _start_run(project), _start_run(project)  # two runs starting at once
        runs = [_finish(first), _finish(second)]
        rec = _record(project)
        assert rec is not None and rec["pid"] != dead.pid and rec["port"] != 9
        assert sorted(r["reused"] for r in runs) == [False, True]  # one started it, one reused
        assert {r["api_url"] for r in runs} == {rec["api_url"]}
        third = _finish(_start_run(project))  # a later run: the same server
        assert third["reused"] and _record(project)["pid"] == rec["pid"]
        assert {r["flow_run_id"] for r in [*runs, third]} <= _flow_run_ids_in_db(project)
        assert len({r["flow_run_id"] for r in [*runs, third]}) == 3
        assert psutil.Process(rec["pid"]).is_running()  # it outlived every run
        shown = prefect_server.describe(project)  # what `textloop status` prints
        assert shown["pid"] == rec["pid"] and shown["healthy"] and not shown["in_use"]

        result = CliRunner().invoke(app, ["down"], env={"TEXTLOOP_PROJECT": str(project.root)})
        assert result.exit_code == 0 and "prefect-server" in result.output, result.output
        assert _gone(rec["pid"], 30) and _record(project) is None
    finally:
        _stop_whatever_is_left(project)


def test_an_idle_project_server_stops_itself(tmp_path):
    project = _project_at(tmp_path / "p", 0.05)  # 3 s without a run
    try:
        run = _finish(_start_run(project))
        rec = _record(project)
        assert not run["reused"] and rec is not None and rec["idle_minutes"] == 0.05
        assert _gone(rec["pid"], 60), "the idle server did not stop within 60 s"
        assert _record(project) is None  # the next run starts a new one
        assert "stops" in project.layout.prefect_server_log.read_text()
    finally:
        _stop_whatever_is_left(project)


def test_a_server_of_other_versions_is_stopped_and_replaced(tmp_path, monkeypatch):
    project = _project_at(tmp_path / "p", 30)
    project.layout.pids.mkdir(parents=True)
    old = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                           start_new_session=True)  # stands for a server of an older prefect
    rec = {"name": prefect_server.NAME, "pid": old.pid, "api_url": "http://127.0.0.1:9/api",
           "create_time": psutil.Process(old.pid).create_time(), "port": 9,
           "versions": {**prefect_server.versions(), "prefect": "2.20.0"}}
    project.layout.prefect_server.write_text(json.dumps(rec))
    launched = []
    monkeypatch.setattr(prefect_server, "launch", lambda _project, idle: launched.append(idle)
                        or {"pid": -1, "api_url": "http://127.0.0.1:9/api"})
    server = prefect_server.project_server(project, 30.0)
    server.abandon()
    assert _gone(old.pid, 30)  # stopped (and reaped by the stop), not left beside the new one
    assert launched == [30.0] and not server.reused and _record(project) is None


@pytest.mark.slow
def test_two_textloop_runs_use_the_same_project_server(tmp_path):
    """The real CLI twice in a small project: the second run (nothing changed) reuses the
    server the first one started, and both flow runs are in the project's Prefect database."""
    from tests.support.e2e_project import make_project, sample_csv

    root = make_project(tmp_path / "proj", "sample.csv", **{"prefect.server_idle_minutes": 5})
    sample_csv(root / "sample.csv", 450)
    project = Project(root)
    env = {**_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        records, flow_runs = [], []
        for args in (["--label-col", "sentiment"], []):
            proc = subprocess.run([sys.executable, "-m", "textloop", "run", "--json", *args],
                                  cwd=root, env=env, capture_output=True, text=True,
                                  timeout=1200, check=False)
            assert proc.returncode == 0, proc.stderr[-3000:]
            out = json.loads(proc.stdout[proc.stdout.index("{"):])
            records.append(_record(project))
            flow_runs.append(out["flow_run_id"])
        assert records[0] is not None and records[1] is not None
        assert (records[0]["pid"], records[0]["port"]) == (records[1]["pid"], records[1]["port"])
        assert out["stages_run"] == [] and not out["deploy"]["registered"]  # a no-op rerun
        assert len(set(flow_runs)) == 2 and set(flow_runs) <= _flow_run_ids_in_db(project)
    finally:
        _stop_whatever_is_left(project)
