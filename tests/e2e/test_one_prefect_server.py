"""One project, one Prefect server: after a run left its project server running, `textloop up`
stops it before starting its own on the project's Prefect database, and refuses while a run
is using it."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_prefect_server import _finish, _project_at, _start_run
from textloop import services
from textloop.cli import prefect_server
from textloop.core.errors import UserError
from textloop.core.layout import Project


def _prefect_servers_on(project: Project) -> list[int]:
    """Pids of live processes serving a Prefect API from this project's PREFECT_HOME."""
    home = str(project.layout.prefect_home)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "prefect server start" not in cmd and "textloop.cli.prefect_server" not in cmd:
            continue
        try:
            if proc.environ().get("PREFECT_HOME") == home:
                found.append(proc.info["pid"])
        except psutil.Error:
            continue
    return found


def _up_prefect(project: Project, port: int) -> dict:
    """What `textloop up` does for Prefect on the local profile, under the hand-over."""
    svc = services.plan(project, "127.0.0.1", {"prefect": port, "mlflow": 1, "serve": 1})[0]
    env = services.service_env(project, "127.0.0.1", {"prefect": port})
    with prefect_server.handed_over(project):
        return services.bring_up(project, svc, env, timeout_s=180)


def test_up_after_a_run_leaves_exactly_one_prefect_server_on_the_project_database(
        tmp_path, monkeypatch):
    from tests.support.fixtures import free_ports

    project = _project_at(tmp_path / "p", 30)
    for key, value in services.project_env(project).items():
        monkeypatch.setenv(key, value)
    try:
        run = _finish(_start_run(project))  # `textloop run`: its project server stays up
        assert not run["reused"] and len(_prefect_servers_on(project)) == 1
        rec = _up_prefect(project, free_ports(1)[0])
        assert _prefect_servers_on(project) == [rec["pid"]]
        assert services.running(project, prefect_server.NAME) is None
        from textloop.cli import _server_line  # status speaks of up's server, not of none

        shown = _server_line(prefect_server.describe(project))
        assert shown == (f"project Prefect server: `textloop up`'s, pid {rec['pid']} at "
                         f"{rec['url']}/api (runs use it); `textloop down` stops it"), shown
        again = _up_prefect(project, free_ports(1)[0])  # up twice: still one
        assert again["pid"] == rec["pid"] and _prefect_servers_on(project) == [rec["pid"]]
    finally:
        services.down(project)
    assert _prefect_servers_on(project) == []


def test_up_refuses_while_a_run_uses_the_project_server(tmp_path):
    project = _project_at(tmp_path / "p", 30)
    project.layout.pids.mkdir(parents=True)
    users = project.layout.prefect_server_users
    users.parent.mkdir(parents=True, exist_ok=True)
    users.touch()
    import subprocess
    import sys

    holder = subprocess.Popen(  # a stand-in server process whose record a run would leave
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
        start_new_session=True)
    try:
        services.write_json_atomic(project.layout.prefect_server, {
            "name": prefect_server.NAME, "pid": holder.pid,
            "create_time": psutil.Process(holder.pid).create_time()})
        prefect_server.attach(project.layout)  # this process is a run using it
        with pytest.raises(UserError, match="is using the project Prefect server"), \
                prefect_server.handed_over(project):
            pass
        assert holder.poll() is None  # not stopped under a run
        prefect_server.detach()
        with prefect_server.handed_over(project):
            pass
        assert holder.wait(timeout=30) is not None and not Path(
            project.layout.prefect_server).exists()
    finally:
        prefect_server.detach()
        if holder.poll() is None:
            holder.kill()
        os.environ.pop("PREFECT_API_URL", None)
