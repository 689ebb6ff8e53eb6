"""`textloop up/down` bookkeeping (pidfiles, process groups) and the ops CLI wiring, without
starting the heavy services (tests/e2e/test_loop_e2e.py runs the real ones)."""

from __future__ import annotations

import sys
import time

import psutil
import typer
from typer.testing import CliRunner

from textloop import services
from textloop.cli.ops import register
from textloop.core.layout import Project


def _project(tmp_path) -> Project:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    return Project(tmp_path)


def test_register_adds_the_ops_commands():
    app = typer.Typer()

    @app.command()
    def other() -> None:  # the main CLI has its own commands
        """Placeholder."""

    register(app)
    runner = CliRunner()
    for cmd in ("serve", "monitor", "deploy-flows", "up", "down"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)
    assert "--port" in runner.invoke(app, ["serve", "--help"]).output


def test_start_records_a_pidfile_and_stop_ends_the_process_group(tmp_path):
    project = _project(tmp_path)
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
            "'import time; time.sleep(120)']); time.sleep(120)"
    svc = services.Service("sleeper", [sys.executable, "-c", child], None, lambda: True)
    rec = services.start(project, svc, {})
    assert services.running(project, "sleeper")["pid"] == rec["pid"]
    proc = psutil.Process(rec["pid"])
    deadline = time.monotonic() + 30
    while not proc.children():  # the grandchild is spawned asynchronously
        assert time.monotonic() < deadline, "child never started its own child"
        time.sleep(0.05)
    grandchild = proc.children()[0]
    assert services.stop(project, "sleeper", timeout_s=20)
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    psutil.wait_procs([grandchild], timeout=20)
    assert not grandchild.is_running()  # the whole process group was signalled
    assert services.running(project, "sleeper") is None
    assert not (tmp_path / ".textloop/run/sleeper.json").exists()
    assert services.stop(project, "sleeper") is False


def test_stale_pidfiles_are_ignored_and_removed(tmp_path):
    project = _project(tmp_path)
    run = tmp_path / ".textloop/run"
    run.mkdir(parents=True)
    (run / "serve.json").write_text('{"pid": 999999, "create_time": 1.0}')
    assert services.running(project, "serve") is None
    assert not (run / "serve.json").exists()
    assert services.down(project) == []
