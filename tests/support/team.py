"""Real team-profile servers on 127.0.0.1 for tests: a private PostgreSQL cluster (initdb into a
temp folder, the machine's server binaries) and a moto S3 server process. Nothing runs at import.

As root, PostgreSQL runs as the `postgres` account: the folders are made under /tmp with the
search bit for others (pytest's own tmp folders are private to root)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx


def reachable_dir(prefix: str) -> Path:
    """A fresh folder under /tmp that the PostgreSQL account can search (mode 0711)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o711)
    return folder


def wait_until(ok: Callable[[], bool], timeout_s: float, what: str,
               proc: subprocess.Popen | None = None) -> None:
    """Bounded polling until ok() is true; fails early when the process died."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL after the timeout."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def postgres_cluster(port: int) -> Iterator[tuple[str, str]]:
    """initdb + postgres on 127.0.0.1:port (no Unix socket); yields (SQLAlchemy URL without
    password, password) of the `textloop` role; the cluster is removed afterwards."""
    from textloop.services import (
        create_databases,
        group_of,
        init_cluster,
        pg_bindir,
        pg_ready,
        pg_user,
    )

    root, user = reachable_dir("tl-pg-"), pg_user()
    password = "s3cret-test"
    data = init_cluster(root / "cluster", password, user)
    url = f"postgresql+psycopg://textloop@127.0.0.1:{port}/textloop"
    proc = subprocess.Popen([str(pg_bindir() / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                             "-p", str(port), "-c", "unix_socket_directories="],
                            cwd=data, user=user, group=group_of(user), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(pg_ready(url, password), 60, "postgres", proc)
        create_databases(url, password)
        yield url, password
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def moto_server(port: int) -> subprocess.Popen:
    """A moto S3 server process on 127.0.0.1:port, ready (the caller stops it)."""
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def ok() -> bool:
        """The server answers its admin API."""
        try:
            return httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=2).is_success
        except httpx.HTTPError:
            return False

    wait_until(ok, 60, "moto server", proc)
    return proc
