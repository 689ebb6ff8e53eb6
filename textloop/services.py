"""`textloop up` / `down`: the loop's local services as background processes with pidfiles.

Each service runs in its own session (process group), logs to <state>/logs/<name>.log and is
recorded in <state>/run/<name>.json (pid + command), so `down` stops exactly what `up` started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from textloop.core.layout import Project, project_env

log = logging.getLogger(__name__)
ORDER = ("prefect", "mlflow", "serve", "flows")


@dataclass(frozen=True)
class Service:
    """One background process: how to start it and how to know it is ready."""

    name: str
    cmd: list[str]
    url: str | None
    ready: Callable[[], bool]


def _http_ok(url: str) -> Callable[[], bool]:
    """A readiness probe: GET url answers 2xx."""

    def probe() -> bool:
        """True when the URL answers 2xx."""
        try:
            return httpx.get(url, timeout=2).is_success
        except httpx.HTTPError:
            return False

    return probe


def _deployments_ready(api: str, names: list[str]) -> Callable[[], bool]:
    """A readiness probe for the flow runner: its deployments are registered."""

    def probe() -> bool:
        """True when every named deployment exists."""
        try:
            resp = httpx.post(f"{api}/deployments/filter", json={"limit": 50}, timeout=2)
        except httpx.HTTPError:
            return False
        found = {d["name"] for d in resp.json()} if resp.is_success else set()
        return set(names) <= found

    return probe


def plan(project: Project, host: str, ports: dict[str, int]) -> list[Service]:
    """The four services of the loop, in start order."""
    py, api = sys.executable, f"http://{host}:{ports['prefect']}/api"
    mlflow_cmd = [py, "-m", "mlflow", "server", "--backend-store-uri", project.tracking_uri,
                  "--artifacts-destination", project.artifact_root.as_uri(), "--serve-artifacts",
                  "--host", host, "--port", str(ports["mlflow"]), "--workers", "1"]
    return [
        Service("prefect", [py, "-m", "prefect", "server", "start", "--host", host, "--port",
                            str(ports["prefect"]), "--analytics-off"],
                f"http://{host}:{ports['prefect']}", _http_ok(f"{api}/health")),
        Service("mlflow", mlflow_cmd, f"http://{host}:{ports['mlflow']}",
                _http_ok(f"http://{host}:{ports['mlflow']}/health")),
        Service("serve", [py, "-m", "textloop.cli.ops", "serve", "--host", host, "--port",
                          str(ports["serve"])], f"http://{host}:{ports['serve']}/dashboard",
                _http_ok(f"http://{host}:{ports['serve']}/model")),
        Service("flows", [py, "-m", "textloop.cli.ops", "deploy-flows"], None,
                _deployments_ready(api, ["lifecycle", "monitor"])),
    ]


def run_dir(project: Project) -> Path:
    """Where pidfiles live."""
    return project.layout.pids


def running(project: Project, name: str) -> dict | None:
    """The pidfile record of a live service we started, else None (stale files are removed)."""
    path = run_dir(project) / f"{name}.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    try:
        proc = psutil.Process(rec["pid"])
        if proc.create_time() == rec["create_time"] and proc.status() != psutil.STATUS_ZOMBIE:
            return rec
    except psutil.Error:
        pass
    path.unlink(missing_ok=True)
    return None


def start(project: Project, svc: Service, env: dict[str, str]) -> dict:
    """Start one service in its own session, logging to a file; record its pidfile."""
    logs = project.layout.logs
    logs.mkdir(parents=True, exist_ok=True)
    run_dir(project).mkdir(parents=True, exist_ok=True)
    with (logs / f"{svc.name}.log").open("ab") as out:
        proc = subprocess.Popen(svc.cmd, cwd=project.root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    rec = {"name": svc.name, "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
           "cmd": svc.cmd, "url": svc.url, "log": str(logs / f"{svc.name}.log")}
    (run_dir(project) / f"{svc.name}.json").write_text(json.dumps(rec, indent=2))
    return rec


def wait_ready(project: Project, svc: Service, timeout_s: float) -> None:
    """Poll the readiness probe until it passes; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while not svc.ready():
        if running(project, svc.name) is None:
            raise RuntimeError(f"{svc.name} exited; see {project.layout.logs / svc.name}.log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{svc.name} not ready after {timeout_s:.0f} s")
        time.sleep(0.5)


def up(project: Project, host: str, ports: dict[str, int], timeout_s: float = 180) -> list[dict]:
    """Start what is not running yet, in order, each ready before the next; return records."""
    # the project's own environment, whatever this process inherited (another TEXTLOOP_PROJECT
    # or MLflow store would make the services follow the wrong project)
    env = {**os.environ, **project_env(project),
           "PREFECT_API_URL": f"http://{host}:{ports['prefect']}/api", "PYTHONUNBUFFERED": "1"}
    records = []
    for svc in plan(project, host, ports):
        rec = running(project, svc.name)
        if rec is None:
            rec = start(project, svc, env)
            wait_ready(project, svc, timeout_s)
        records.append(rec)
    return records


def stop(project: Project, name: str, timeout_s: float = 30) -> bool:
    """SIGTERM the service's process group, SIGKILL after the timeout; remove its pidfile."""
    rec = running(project, name)
    if rec is None:
        return False
    pid = rec["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)  # the group id is the pid: start_new_session=True
        psutil.Process(pid).wait(timeout_s)
    except psutil.TimeoutExpired:
        log.warning("%s did not stop in %.0f s; killing it", name, timeout_s)
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    (run_dir(project) / f"{name}.json").unlink(missing_ok=True)
    return True


def down(project: Project) -> list[str]:
    """Stop every service `up` started, in reverse order; return the names stopped."""
    return [name for name in reversed(ORDER) if stop(project, name)]


def use_running_prefect(project: Project) -> None:
    """Point this process at the Prefect server `textloop up` started, when one is running."""
    rec = running(project, "prefect")
    if rec is not None and not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = f"{rec['url']}/api"
        if "prefect.context" in sys.modules:  # settings were read at import: re-read them
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
