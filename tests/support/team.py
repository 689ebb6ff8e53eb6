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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TeamStack:
    """The shared team servers of a test module: URLs (no secrets) and the cluster password."""

    root: Path
    db_url: str
    s3_endpoint_url: str
    mlflow_url: str
    prefect_api_url: str
    password: str

    def backend(self, pool: str) -> dict[str, object]:
        """params.yaml `backend.*` of a project on this stack (configuration only, no secret)."""
        return {"backend.profile": "team", "backend.db_url": self.db_url,
                "backend.s3_endpoint_url": self.s3_endpoint_url,
                "backend.mlflow_url": self.mlflow_url,
                "backend.prefect_api_url": self.prefect_api_url, "backend.work_pool": pool}


@contextlib.contextmanager
def team_stack() -> Iterator[TeamStack]:
    """PostgreSQL (private cluster), the moto S3 store, MLflow and Prefect on them, started on
    free 127.0.0.1 ports through `up --profile team`'s own service plan (a hub folder holds
    their pidfiles and logs); stopped and removed afterwards."""
    from tests.support.fixtures import free_ports
    from textloop import services
    from textloop.core.backend import endpoints, local_password
    from textloop.core.config import apply_overrides
    from textloop.core.layout import Project

    root = reachable_dir("tl-stack-")
    hub = Project(root / "hub")
    hub.root.mkdir()
    (hub.root / "dvc.yaml").write_text("stages: {}\n")
    shutil.copyfile(Path(__file__).resolve().parents[2] / "params.yaml", hub.params_path)
    apply_overrides(hub.params_path, {"backend.profile": "team"})
    hub.layout.root.mkdir(mode=0o700)
    names = ("postgres", "s3", "prefect", "mlflow", "serve")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    plan = [s for s in services.team_plan(hub, "127.0.0.1", ports) if s.name in names[:4]]
    env = {**services.service_env(hub, "127.0.0.1", ports), "PREFECT_HOME": str(root / "ph")}
    try:
        for svc in plan[:2]:  # PostgreSQL and S3 first, then Prefect and MLflow side by side
            services.bring_up(hub, svc, env, 240)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda svc: services.bring_up(hub, svc, env, 240), plan[2:]))
        ep = endpoints(hub.params().backend, hub.layout.root, ports)
        yield TeamStack(root, ep.db_url, str(ep.s3_endpoint_url), ep.mlflow_url,
                        ep.prefect_api_url, local_password(hub.layout.root))
    finally:
        for name in ("mlflow", "prefect", "s3", "postgres"):
            services.stop(hub, name)
        shutil.rmtree(root, ignore_errors=True)
