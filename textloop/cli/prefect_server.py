"""A temporary Prefect server for one `textloop run`, started early and in the background.

Without a configured API (`textloop up`'s server, `PREFECT_API_URL`, a test harness), Prefect
starts its own temporary server when the flow begins, and waits for it (~7 s here). The same
server, started by us as the first thing the run does, boots in its own process while this one
imports and checks its settings; the flow then finds it ready (or nearly). The run is still a
Prefect flow run, recorded in the project's Prefect database (`PREFECT_HOME` in the state folder).
The command line is Prefect's own (`prefect.server.api.server.SubprocessASGIServer`)."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"  # Prefect's own setting
DEFAULT_TIMEOUT_S = 120.0  # a first start migrates a new database: slow on a loaded machine


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


@dataclass
class TemporaryServer:
    """One uvicorn process serving Prefect's API app (UI off), as Prefect's temporary server."""

    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> TemporaryServer:
        """Start the process (returns at once). Environment: this one (PREFECT_HOME etc. set by
        textloop.core.layout.configure) plus the flags Prefect gives its temporary server."""
        spec = importlib.util.find_spec("prefect")  # locates the package without importing it
        app_dir = str(Path(spec.origin).parent.parent) if spec and spec.origin else "."
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
               str(self.port), "--log-level", "error", "--lifespan", "on"]
        self.process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        atexit.register(self.stop)  # after Prefect's own exit handlers flushed logs/events
        return self

    def healthy(self) -> bool:
        """One health probe of the API."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

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


def start_early() -> TemporaryServer | None:
    """Launch a temporary server when no Prefect API is configured; None when one is."""
    if api_configured():
        return None
    server = TemporaryServer(_free_port()).launch()
    log.debug("started a temporary Prefect server on %s", server.api_url)
    return server


def use(server: TemporaryServer | None) -> None:
    """Wait for an early server and point Prefect at it. If it does not come up, nothing is
    set and Prefect starts its own temporary server as it would have anyway."""
    if server is None:
        return
    timeout_s = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    if not server.wait_ready(timeout_s):
        log.warning("the temporary Prefect server did not start; Prefect will start its own")
        return
    os.environ["PREFECT_API_URL"] = server.api_url
    if "prefect.context" in sys.modules:  # settings were read at import: re-read them
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
