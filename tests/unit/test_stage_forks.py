"""The stage fork server (textloop.stage_forks): a command handed over to it behaves as the
same command run as its own process: argv, working folder, environment, stdin/stdout/stderr,
exit code or signal, SIGTERM; it dies with its client, with the server, and the server with
the run's process; the run's CPU accounting counts every forked command."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from textloop import stage_forks

pytestmark = pytest.mark.skipif(not stage_forks.available(), reason="Linux only (fork, pidfd)")
REPO = Path(__file__).resolve().parents[2]
ENTRY = "tests.support.fork_entry"
CLIENT = ("import sys\nfrom textloop.stage_forks import hand_over\n"
          "hand_over(sys.argv)\nsys.exit(99)\n")  # 99: not handed over


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A started server running tests/support/fork_entry.py, ready (its `ready` line read)."""
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.delenv(stage_forks.SOCKET_ENV, raising=False)
    srv = stage_forks.StageForkServer(tmp_path / "logs" / "forks.log", entry=ENTRY, modules=())
    srv.start()
    assert srv.proc.stdout.readline() == b"ready\n"
    yield srv
    srv.stop()


def client(*args: str, cwd: Path | None = None, env: dict | None = None,
           **kwargs) -> subprocess.Popen:
    """A client process (what `python -m textloop stage ...` runs first) with argv `args`."""
    return subprocess.Popen([sys.executable, "-c", CLIENT, *args], cwd=cwd,
                            env={**os.environ, **(env or {})}, **kwargs)


def ends_within(pid: int, timeout: float) -> bool:
    """Whether process `pid` (any process) ends within `timeout` seconds (a pidfd, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_a_forked_command_gets_argv_folder_environment_and_descriptors(server, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    stdin = tmp_path / "in.txt"
    stdin.write_text("from stdin")
    with stdin.open("rb") as given:
        proc = client("report", "3", cwd=folder, env={"FORK_TEST_VALUE": "from the client"},
                      stdin=given, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    first, *rest = out.splitlines()
    seen = json.loads(first)
    assert seen["argv"] == ["-c", "report", "3"] and seen["cwd"] == str(folder)
    assert seen["stdin"] == "from stdin"
    assert seen["env"] == seen["c_env"] == "from the client"  # os.environ and the C environment
    assert seen["pid"] not in (proc.pid, server.proc.pid)  # a fork of the server, not the client
    assert rest == ["atexit ran"] and err == "to stderr\n"
    server.stop()
    assert server.log_path.read_text() == f"fork {seen['pid']} `report 3` exit 3\n"


def test_a_command_killed_by_a_signal_ends_its_client_by_the_same_signal(server):
    proc = client("kill-self", str(int(signal.SIGUSR1)))
    assert proc.wait(timeout=60) == -signal.SIGUSR1
    assert client("report", "0", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                  ).wait(timeout=60) == 0  # the server goes on serving


def test_an_uncaught_interrupt_ends_the_client_as_it_ends_python(server):
    proc = client("interrupt", stderr=subprocess.PIPE, text=True)
    assert proc.wait(timeout=60) == -signal.SIGINT  # `python -c "raise KeyboardInterrupt"`: same
    assert proc.stderr.read().rstrip().endswith("KeyboardInterrupt")


def test_an_interrupt_while_the_command_exits_ends_it_by_sigint_not_in_the_server(server):
    """^C reaches a fork twice (the terminal's, then the client's forward); one that lands while
    the command is exiting (joining a thread) ends it by SIGINT, as Python ends, and never
    unwinds into the server's loop inside the fork."""
    proc = client("linger", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "exiting\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == -signal.SIGINT
    err = proc.stderr.read()
    assert "stage_forks" not in err and "Bad file descriptor" not in err, err
    server.stop()
    assert server.log_path.read_text().endswith("`linger` exit -2\n")


def test_sigterm_to_the_client_reaches_the_command(server):
    proc = client("wait-term", stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "waiting\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 5
    assert proc.stdout.read() == "got SIGTERM\n"


def test_a_killed_client_takes_its_command_with_it(server):
    proc = client("hang", stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.kill()
    proc.wait(timeout=60)
    assert ends_within(child, 30)


def test_a_killed_server_takes_its_commands_and_ends_their_clients(server):
    proc = client("hang", stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    server.proc.kill()
    assert ends_within(child, 30)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_a_killed_run_process_leaves_no_server_and_no_command(tmp_path):
    owner = ("import os, subprocess, sys, signal\nfrom pathlib import Path\n"
             "from textloop.stage_forks import StageForkServer\n"
             f"srv = StageForkServer(Path({str(tmp_path / 'f.log')!r}), entry={ENTRY!r}, modules=())\n"
             "srv.start(); srv.proc.stdout.readline()\n"
             f"c = subprocess.Popen([sys.executable, '-c', {CLIENT!r}, 'hang'],"
             " stdout=subprocess.PIPE, text=True)\n"
             "print(srv.proc.pid, c.pid, c.stdout.readline().strip(), flush=True)\n"
             "signal.pause()\n")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True,
                            env=env)
    server_pid, client_pid, child = (int(v) for v in proc.stdout.readline().split())
    proc.kill()
    proc.wait(timeout=30)
    assert ends_within(server_pid, 30) and ends_within(child, 30)
    assert ends_within(client_pid, 30)


def test_no_ready_server_means_the_normal_path_at_once(tmp_path):
    gone = {stage_forks.SOCKET_ENV: str(tmp_path / "no-such-socket")}
    assert client("report", "0", env=gone).wait(timeout=60) == 99
    assert client("report", "0").wait(timeout=60) == 99  # no SOCKET_ENV at all


def test_the_run_counts_the_cpu_of_every_forked_command(server):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert client("burn", "0.5").wait(timeout=120) == 0
    live = server.cpu_seconds()  # the server waited for its child: its CPU is the server's now
    assert live >= 0.5
    server.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert spent >= 0.5 + live - 0.5  # the server and its forked command, waited for
    assert server.cpu_seconds() == 0.0  # not counted twice once it was waited for


def test_stopping_ends_the_server_and_its_socket(server):
    import socket

    path = server.path
    assert os.environ[stage_forks.SOCKET_ENV] == path
    server.stop()
    assert server.proc.returncode == 0 and stage_forks.SOCKET_ENV not in os.environ
    with socket.socket(socket.AF_UNIX) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect("\0" + path[1:])


def test_off_or_elsewhere_there_is_no_server(tmp_path, monkeypatch):
    with stage_forks.fork_server(tmp_path / "f.log", enabled=False) as off:
        assert off is None
    monkeypatch.setattr(stage_forks.sys, "platform", "darwin")
    with stage_forks.fork_server(tmp_path / "f.log", enabled=True) as elsewhere:
        assert elsewhere is None


def test_a_run_that_stops_with_a_command_still_running_takes_it_along(server):
    proc = client("hang", stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    server.stop(grace_s=0.5)  # the run was interrupted: its fork does not outlive it
    assert server.proc.returncode == -signal.SIGKILL
    assert ends_within(child, 30) and proc.wait(timeout=30) == -signal.SIGKILL


def test_a_run_ended_by_an_exception_terminates_a_command_still_running(server):
    """SIGTERM to `textloop run` (or ^C, or a failure) ends its flow by an exception while a
    stage fork may still run: the fork gets SIGTERM after ABANDON_S instead of finishing its
    work in the workspace until the grace ends."""
    proc = client("hang", stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert stage_forks.child_pids(server.proc.pid) == [child]
    server.stop(grace_s=20, abandoned=True)
    assert server.proc.returncode == 0 and proc.wait(timeout=30) == -signal.SIGTERM
    assert server.log_path.read_text() == f"fork {child} `hang` exit -15\n"


def test_the_preload_imports_no_module_that_reads_the_environment_when_imported():
    code = ("import sys\nfrom textloop.stage_forks import PRELOAD, preload\npreload()\n"
            "print(sorted(m for m in PRELOAD if m not in sys.modules))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', "
            "'huggingface_hub', 'mlflow', 'matplotlib', 'dvc'}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    assert proc.stdout.splitlines() == ["[]", "[]"]  # all of it imported; none of those
