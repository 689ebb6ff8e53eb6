"""The Prefect server `textloop run` uses when no API is configured: a project server that
outlives a run (like Gradle's daemon), or with `prefect.server_idle_minutes: 0` a temporary one.

Without a configured API (`textloop up`'s server, `PREFECT_API_URL`, a test harness), Prefect
would start its own temporary server when the flow begins and wait for it (~7 s of CPU here).
Instead the run looks in the state folder for the project server (`<state>/run/prefect-server.json`:
pid, port, start time, textloop/prefect/python versions): a live, healthy one with the same
versions is reused; a stale record (killed server, other versions) is replaced. A new one is
launched detached (own session, log in `<state>/logs/prefect-server.log`) as the first thing the
run does, so it boots while this process imports and checks its settings. The run is still a
Prefect flow run, recorded in the project's Prefect database (`PREFECT_HOME` in the state folder).

Who may start or stop it is decided under one OS lock (`<state>/locks/prefect-server.lock`), so
two runs starting at once start one server. Every run using it holds a shared OS lock on
`<state>/locks/prefect-server.users` for its whole life (the kernel drops it when the run dies,
even by SIGKILL) and touches that file; the server's watchdog stops it after
`prefect.server_idle_minutes` during which nobody held that lock. `textloop down` stops it.
The server process is this module: Prefect's API app (UI off, the services Prefect runs in its
own temporary server) under uvicorn, plus the watchdog thread."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import importlib.metadata
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from textloop.core.db_template import seed_from_template
from textloop.core.layout import Project, StateLayout

log = logging.getLogger(__name__)
TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"  # Prefect's own setting
DEFAULT_TIMEOUT_S = 120.0  # a first start migrates a new database: slow on a loaded machine
IDLE_ENV = "TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES"  # overrides prefect.server_idle_minutes (tests: 0); see config.ENV_SETTINGS
NAME = "prefect-server"  # its pidfile record is <state>/run/prefect-server.json (textloop.services)
SERVER_FLAGS = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",  # what Prefect gives its own temporary server
                # a run's server needs no block types (`textloop up`'s server registers them
                # when it serves the same database) and runs no automations (no trigger
                # evaluation, no actions consumer)
                "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
                "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}


def api_configured() -> bool:
    """Whether this process already talks to a Prefect API (env, or settings already loaded
    by a harness); reading Prefect's settings is not worth importing Prefect for."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    if "prefect.settings" not in sys.modules:
        return False
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def _free_port() -> int:
    """A port nobody listens on now (the OS picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(api_url: str) -> bool:
    """One health probe of a Prefect API (2 s at most)."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _startup_timeout() -> float:
    """Seconds to wait for a server to answer (Prefect's own setting, else 120)."""
    return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)


@dataclass
class TemporaryServer:
    """One uvicorn process serving Prefect's API app (UI off), as Prefect's temporary server;
    stopped when this process exits (`prefect.server_idle_minutes: 0`)."""

    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> TemporaryServer:
        """Start the process (returns at once). Environment: this one (PREFECT_HOME etc. set by
        textloop.core.layout.configure) plus the flags Prefect gives its temporary server."""
        cmd = [sys.executable, "-m", "textloop.cli.prefect_server", "--port", str(self.port),
               "--temporary"]
        self.process = subprocess.Popen(cmd, env={**os.environ, **SERVER_FLAGS},
                                        stdin=subprocess.DEVNULL)
        atexit.register(self.stop)  # after Prefect's own exit handlers flushed logs/events
        return self

    def healthy(self) -> bool:
        """One health probe of the API."""
        return _healthy(self.api_url)

    def wait_ready(self, timeout_s: float) -> bool:
        """Poll the health endpoint until it answers (True), the process exits or timeout_s
        passes (False: stopped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            if self.healthy():
                return True
            time.sleep(0.1)  # bounded polling of a server starting up
        self.stop()
        return False

    def abandon(self) -> None:
        """The run failed before its flow: a temporary server goes with it."""
        self.stop()

    def stop(self) -> None:
        """Terminate the process (kill it after 5 s); safe to call twice."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the project server: outlives a run, stops itself when idle ---------------------------


def idle_minutes(project: Project) -> float:
    """`prefect.server_idle_minutes` as this run resolves it (textloop.yaml, then
    $TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES, then the run's --set; the test suite sets the
    variable to 0: no test leaves a server behind). 0: a temporary server per run."""
    return float(project.params().prefect.server_idle_minutes)


def versions() -> dict[str, str]:
    """What the server runs: a change of any of these replaces a running server."""
    return {"textloop": importlib.metadata.version("textloop"),
            "prefect": importlib.metadata.version("prefect"), "python": sys.executable}


_USERS_FD: int | None = None  # this process's shared lock on the users file (held until exit)


def attach(layout: StateLayout) -> None:
    """Mark this process as a user of the project server until it exits: a shared OS lock on
    the users file (dropped by the kernel when we die) and a touch of it (now, and at exit)."""
    global _USERS_FD
    if _USERS_FD is None:
        layout.prefect_server_users.parent.mkdir(parents=True, exist_ok=True)
        _USERS_FD = os.open(layout.prefect_server_users, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(_USERS_FD, fcntl.LOCK_SH)
        atexit.register(_touch, layout.prefect_server_users)
    _touch(layout.prefect_server_users)


def detach() -> None:
    """Drop this process's shared lock (tests; a run simply exits)."""
    global _USERS_FD
    fd, _USERS_FD = _USERS_FD, None
    if fd is not None:
        os.close(fd)


def _touch(path: Path) -> None:
    """Set the users file's mtime to now: the watchdog counts idle time from it."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _start_lock(layout: StateLayout) -> FileLock:
    """The OS lock under which a server is started, replaced, attached to or retired."""
    path = layout.lock(NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, thread_local=False, preserve_lock_file=True)


def launch(project: Project, idle_min: float) -> dict[str, Any]:
    """Start the project server detached (`textloop.services.start`: own session, log file,
    pidfile) on a free 127.0.0.1 port; returns its record at once (not ready yet)."""
    from textloop import services

    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    cmd = [sys.executable, "-m", "textloop.cli.prefect_server", "--project", str(project.root),
           "--port", str(port), "--idle-minutes", f"{idle_min:g}"]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    svc = services.Service(NAME, cmd, f"http://127.0.0.1:{port}", lambda: _healthy(api_url))
    rec = services.start(project, svc, {**env, **SERVER_FLAGS}, extra={
        "port": port, "api_url": api_url, "idle_minutes": idle_min, "versions": versions(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds")})
    log.debug("started the project Prefect server: pid %s on %s", rec["pid"], api_url)
    return rec


@dataclass
class ProjectServer:
    """The project server this run uses; `start_lock` is held until it answered (a second
    run waits, then reuses it). `reused`: it was running before this run."""

    project: Project
    record: dict[str, Any]
    reused: bool
    start_lock: FileLock | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return str(self.record["api_url"])

    def wait_ready(self, timeout_s: float) -> bool:
        """Poll until it answers (attach to it: True), its process exits or timeout_s passes
        (False: stopped, its record removed; Prefect will start its own)."""
        from textloop import services

        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if _healthy(self.api_url):
                    attach(self.project.layout)
                    return True
                if services.running(self.project, NAME) is None:
                    break
                time.sleep(0.1)  # bounded polling of a server starting up
            services.stop(self.project, NAME, timeout_s=10)
            return False
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Release the start lock; the server keeps running (it stops itself when idle)."""
        lock, self.start_lock = self.start_lock, None
        if lock is not None:
            lock.release()


def _held_start_lock(project: Project, who: str, then: str = "") -> Any:
    """The project's Prefect-server start lock, acquired; UserError naming the lock file when
    `who` held it past the start-up timeout (`then`: what the user does next)."""
    from textloop.core.errors import UserError

    lock = _start_lock(project.layout)
    try:
        lock.acquire(timeout=_startup_timeout())
    except Timeout:
        raise UserError(f"{lock.lock_file}: {who} the Prefect server's start lock for "
                        f"{_startup_timeout():.0f} s{then}") from None
    return lock


def project_server(project: Project, idle_min: float) -> ProjectServer:
    """Reuse the recorded server when it is alive with our versions (healthy: attached at
    once), else replace it: under the start lock, so concurrent runs start one server."""
    from textloop import services

    lock = _held_start_lock(project, "another run kept")
    try:
        rec = services.running(project, NAME)  # None: none, or a dead one (record removed)
        if rec is not None and rec.get("versions") == versions():
            if _healthy(rec["api_url"]):
                attach(project.layout)
                lock.release()
                return ProjectServer(project, rec, reused=True)
            return ProjectServer(project, rec, reused=True, start_lock=lock)  # still starting
        if rec is not None:
            log.info("replacing the project Prefect server (pid %s): versions changed", rec["pid"])
            services.stop(project, NAME, timeout_s=10)
        return ProjectServer(project, launch(project, idle_min), reused=False, start_lock=lock)
    except BaseException:
        lock.release()
        raise


@contextlib.contextmanager
def handed_over(project: Project) -> Iterator[None]:
    """One Prefect server per project database: before `textloop up` starts its own server on
    the project's Prefect database, the project server a run left running is stopped (under
    the start lock, held until `up` is done, so no run starts another meanwhile). Raises
    UserError while a run is using it."""
    from textloop import services
    from textloop.core.errors import UserError

    lock = _held_start_lock(project, "a run kept", "; run `textloop up` again later")
    try:
        if services.running(project, NAME) is not None:
            if _in_use(project.layout.prefect_server_users):
                raise UserError("a `textloop run` is using the project Prefect server on this "
                                "project's database; run `textloop up` when it has finished "
                                "(one Prefect server per project)")
            log.info("stopping the project Prefect server a run started: `textloop up` "
                     "serves the project's Prefect database now")
            services.stop(project, NAME, timeout_s=30)
        yield
    finally:
        lock.release()


def start_early(project: Project | None = None) -> TemporaryServer | ProjectServer | None:
    """The server for this run, started (or found) as the run's first step; None when an API
    is configured. With a project and `prefect.server_idle_minutes` > 0 the project server,
    else a temporary one stopped when this process exits."""
    if api_configured():
        return None
    idle_min = idle_minutes(project) if project is not None else 0.0
    if idle_min > 0:
        return project_server(project, idle_min)
    server = TemporaryServer(_free_port()).launch()
    log.debug("started a temporary Prefect server on %s", server.api_url)
    return server


def running_api(project: Project) -> str | None:
    """The Prefect API a run could record in without starting anything: the configured one,
    else the project server when it is up and healthy (attached to: not stopped meanwhile);
    None when neither is."""
    from textloop import services

    if api_configured():
        if url := os.environ.get("PREFECT_API_URL"):
            return url
        from prefect.settings import get_current_settings

        return str(get_current_settings().api.url)
    rec = services.running(project, NAME)
    if rec is None or rec.get("versions") != versions() or not _healthy(rec["api_url"]):
        return None
    attach(project.layout)
    return str(rec["api_url"])


def use(server: TemporaryServer | ProjectServer | None) -> None:
    """Wait for the server and point Prefect at it. If it does not come up, nothing is set
    and Prefect starts its own temporary server as it would have anyway."""
    if server is None:
        return
    if not server.wait_ready(_startup_timeout()):
        log.warning("the Prefect server did not start; Prefect will start its own")
        return
    os.environ["PREFECT_API_URL"] = server.api_url
    if "prefect.context" in sys.modules:  # settings were read at import: re-read them
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def describe(project: Project) -> dict[str, Any] | None:
    """The running project server for `textloop status`: its record, whether it answers, and
    minutes since a run last used it; `textloop up`'s Prefect server when up serves the project
    (runs use that one: one project, one server); None when neither runs."""
    from textloop import services

    rec = services.running(project, NAME)
    if rec is None:
        up = services.running(project, "prefect")
        return None if up is None else {
            "by_up": True, "pid": up["pid"], "api_url": f"{up['url']}/api",
            "healthy": _healthy(f"{up['url']}/api")}
    users = project.layout.prefect_server_users
    used = users.stat().st_mtime if users.exists() else time.time()
    return {**{k: rec.get(k) for k in ("pid", "api_url", "started_at", "idle_minutes",
                                       "versions", "log")},
            "healthy": _healthy(rec["api_url"]), "in_use": _in_use(users),
            "idle_for_minutes": round((time.time() - used) / 60, 1)}


# ---- the server process: Prefect's API under uvicorn + the idle watchdog ------------------


def _in_use(users: Path) -> bool:
    """Whether a run holds its shared lock on the users file (a probe for an exclusive one)."""
    try:
        fd = os.open(users, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we got


def _retire(layout: StateLayout) -> FileLock | None:
    """Take the start lock and check, under it, that no run uses the server: then the record
    is removed (a new run starts a new server) and the held lock returned; else None."""
    lock = _start_lock(layout)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return None
    if _in_use(layout.prefect_server_users):
        lock.release()
        return None
    rec_path = layout.prefect_server
    with contextlib.suppress(FileNotFoundError, ValueError):
        if json.loads(rec_path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            rec_path.unlink()
    return lock


def watchdog(server: Any, layout: StateLayout, idle_s: float, poll_s: float) -> None:
    """Stop `server` (uvicorn) after idle_s seconds in which no run held or touched the users
    file; a run in progress (lock held) keeps it alive however long it takes."""
    last_busy = time.time()
    while not server.should_exit:
        time.sleep(poll_s)  # a periodic check of the clock, not synchronisation
        users = layout.prefect_server_users
        if _in_use(users):
            last_busy = time.time()
            continue
        touched = users.stat().st_mtime if users.exists() else 0.0
        if time.time() - max(last_busy, touched) < idle_s:
            continue
        lock = _retire(layout)
        if lock is not None:
            log.warning("no run for %.1f minutes: the project Prefect server stops", idle_s / 60)
            server.retire_lock = lock  # held until the process exits
            server.should_exit = True
            return


def _default_database() -> Path | None:
    """The server's SQLite file when it is Prefect's default (`PREFECT_HOME/prefect.db`); None
    when a connection URL is configured (PostgreSQL, another file): that one is left alone."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = settings.server.database.connection_url
    default = settings.home / "prefect.db"
    if url is None or url.get_secret_value() == f"sqlite+aiosqlite:///{default}":
        return default
    return None


def seed_database() -> None:
    """A new project's Prefect database starts as a copy of the template (seed_from_template):
    Prefect's ~115 migrations on a new SQLite file cost more CPU than the rest of the server's
    start. Without a template, Prefect's own migrations build the database here, and a snapshot
    of it becomes the template."""
    db = _default_database()
    if db is not None:
        seed_from_template(db, "prefect", _migrate)


def _migrate(db: Path) -> None:
    """Prefect's migrations on the new database (the server's configured one, `db`)."""
    import asyncio

    from prefect.server.database import provide_database_interface

    asyncio.run(provide_database_interface().create_db())


def _uvicorn(port: int) -> Any:
    """A uvicorn server for Prefect's API app on 127.0.0.1:port, its database seeded first."""
    import uvicorn

    seed_database()
    config = uvicorn.Config("prefect.server.api.server:create_app", factory=True,
                            host="127.0.0.1", port=port, log_level="error", lifespan="on")
    return uvicorn.Server(config)


def serve(root: Path, port: int, idle_min: float) -> None:
    """Run Prefect's API app on 127.0.0.1:port until idle (or SIGTERM: `textloop down`)."""
    layout = Project(root).layout
    server = _uvicorn(port)
    idle_s = idle_min * 60
    threading.Thread(target=watchdog, args=(server, layout, idle_s, min(max(idle_s / 10, 0.5), 10)),
                     daemon=True, name="idle-watchdog").start()
    try:
        server.run()
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError):  # not replaced by another
            if json.loads(layout.prefect_server.read_text(encoding="utf-8")).get("pid") == os.getpid():
                layout.prefect_server.unlink()


def main(argv: list[str] | None = None) -> None:
    """`python -m textloop.cli.prefect_server --project DIR --port N --idle-minutes M`; with
    `--temporary` (no project): the server until SIGTERM (TemporaryServer)."""
    ap = argparse.ArgumentParser(description="The project Prefect server (textloop run).")
    ap.add_argument("--project", type=Path)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle-minutes", type=float)
    ap.add_argument("--temporary", action="store_true", help="no project: stopped by its starter")
    args = ap.parse_args(argv)
    if not args.temporary and (args.project is None or args.idle_minutes is None):
        ap.error("--project and --idle-minutes are required (or --temporary)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.temporary:
        _uvicorn(args.port).run()
    else:
        serve(args.project, args.port, args.idle_minutes)


if __name__ == "__main__":
    main()
