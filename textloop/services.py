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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from textloop.core.backend import (
    DATABASES,
    LOCAL_HOST,
    LOCAL_USER,
    Endpoints,
    endpoints,
    local_password,
    starts_locally,
    write_team_record,
)
from textloop.core.errors import UserError
from textloop.core.layout import Project, project_env
from textloop.core.lock import write_json_atomic

log = logging.getLogger(__name__)
# `down` stops in reverse; prefect-server: the project server `textloop run` keeps between runs
ORDER = ("postgres", "s3", "prefect", "mlflow", "serve", "flows", "worker", "prefect-server")


@dataclass(frozen=True)
class Service:
    """One background process: how to start it and how to know it is ready. `prepare` runs
    before the start (initdb), `after` once it is ready (create databases, the bucket); `env` is
    added to the shared environment; `user` runs it as that account (PostgreSQL refuses root)."""

    name: str
    cmd: list[str]
    url: str | None
    ready: Callable[[], bool]
    prepare: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    cwd: Path | None = None


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
    """The pidfile record of a live service this project folder started, else None (stale
    files are removed, and so is a record copied in with the folder from another project, whose
    service `textloop down` here must never stop)."""
    path = run_dir(project) / f"{name}.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    if "log" in rec and Path(rec["log"]).parent != project.layout.logs:
        path.unlink(missing_ok=True)  # copied with the project: another folder's service
        return None
    try:
        proc = psutil.Process(rec["pid"])
        if proc.create_time() == rec["create_time"] and proc.status() != psutil.STATUS_ZOMBIE:
            return rec
    except psutil.Error:
        pass
    path.unlink(missing_ok=True)
    return None


def start(project: Project, svc: Service, env: dict[str, str],
          extra: dict[str, Any] | None = None) -> dict:
    """Start one service in its own session (stdin closed), logging to a file; record its
    pidfile (atomically: another process may be reading it), with `extra` fields added."""
    logs = project.layout.logs
    logs.mkdir(parents=True, exist_ok=True)
    run_dir(project).mkdir(parents=True, exist_ok=True)
    with (logs / f"{svc.name}.log").open("ab") as out:
        proc = subprocess.Popen(svc.cmd, cwd=svc.cwd or project.root, env={**env, **svc.env},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, user=svc.user, group=group_of(svc.user))
    rec = {"name": svc.name, "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
           "cmd": svc.cmd, "url": svc.url, "log": str(logs / f"{svc.name}.log"), **(extra or {})}
    write_json_atomic(run_dir(project) / f"{svc.name}.json", rec)
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


def group_of(user: str | None) -> int | None:
    """The primary group of `user` (None: keep ours)."""
    import pwd

    return pwd.getpwnam(user).pw_gid if user else None


def up(project: Project, host: str, ports: dict[str, int], timeout_s: float = 180,
       profile: str = "local") -> list[dict]:
    """Start what is not running yet, in order, each ready before the next; return records.
    profile team: PostgreSQL, the S3 store, MLflow and Prefect on them first (team_plan)."""
    services = plan(project, host, ports)
    if profile == "team":
        services = team_plan(project, host, ports)
    env = service_env(project, host, ports)
    return [bring_up(project, svc, env, timeout_s) for svc in services]


def service_env(project: Project, host: str, ports: dict[str, int]) -> dict[str, str]:
    """The environment every service starts with: the project's own, whatever this process
    inherited (another TEXTLOOP_PROJECT or MLflow store would make them follow the wrong
    project); the team profile's server URLs win over the local Prefect port."""
    return {**os.environ, "PREFECT_API_URL": f"http://{host}:{ports['prefect']}/api",
            **project_env(project), "PYTHONUNBUFFERED": "1"}


def bring_up(project: Project, svc: Service, env: dict[str, str], timeout_s: float) -> dict:
    """Start one service unless it runs already, wait until it is ready, run its idempotent
    `after` step (databases, bucket: also repairs one started before); its pidfile record."""
    rec = running(project, svc.name)
    if rec is None:
        if svc.prepare:
            svc.prepare()
        rec = start(project, svc, env)
        wait_ready(project, svc, timeout_s)
    if svc.after:
        svc.after()
    return rec


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


# ---- the team profile: PostgreSQL, an S3 store, MLflow and Prefect on them -------------------


def pg_bindir() -> Path:
    """Folder of initdb/postgres: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                  if p.parent.name.isdigit() else 0)
    if not dirs:
        raise UserError("no PostgreSQL server binaries (initdb): install postgresql or set "
                        "backend.db_url to an existing server")
    return dirs[-1]


def pg_user() -> str | None:
    """The account the private cluster runs as: ours, or `postgres` when we are root
    (PostgreSQL refuses to run as root)."""
    return "postgres" if os.geteuid() == 0 else None


def _grant_traverse(state: Path, user: str) -> None:
    """Root only: let `user` reach <state>/postgres (group search bit on the state folder, no
    listing); every folder above must already be searchable by others."""
    import pwd

    for folder in state.parents:
        if not folder.stat().st_mode & 0o001:
            raise UserError(f"{folder}: PostgreSQL runs as {user!r} (not root) and cannot reach "
                            f"the state folder below it; run textloop as a normal user, make the "
                            f"folder searchable (chmod o+x) or set backend.db_url")
    os.chown(state, -1, pwd.getpwnam(user).pw_gid)
    state.chmod(0o710)


def init_cluster(cluster: Path, password: str, user: str | None) -> Path:
    """initdb a private cluster in cluster/data once (role textloop, scram passwords, UTF-8);
    returns the data folder. Raises RuntimeError with initdb's output when it fails."""
    data = cluster / "data"
    if (data / "PG_VERSION").is_file():
        return data
    cluster.mkdir(parents=True, exist_ok=True, mode=0o700)
    pwfile = cluster / "pwfile"
    pwfile.write_text(password)
    pwfile.chmod(0o600)
    if user:
        import pwd

        entry = pwd.getpwnam(user)
        for path in (cluster, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        done = subprocess.run([str(pg_bindir() / "initdb"), "-D", str(data), "-U", LOCAL_USER,
                               f"--pwfile={pwfile}", "-A", "scram-sha-256", "-E", "UTF8"],
                              cwd=cluster, user=user, group=group_of(user), capture_output=True,
                              text=True, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode:
        raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
    return data


def pg_ready(url: str, password: str) -> Callable[[], bool]:
    """A readiness probe: the server accepts a login on its `postgres` database."""

    def probe() -> bool:
        """True when a connection succeeds."""
        import psycopg

        try:
            with psycopg.connect(libpq_url(url, "postgres"), password=password, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    return probe


def libpq_url(url: str, database: str) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq URL to `database` (psycopg.connect takes it)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql", database=database).render_as_string(
        hide_password=False)


def create_databases(url: str, password: str | None) -> None:
    """Create the prediction-log, MLflow and Prefect databases on the server when missing."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(libpq_url(url, "postgres"), password=password, autocommit=True) as conn:
        for name in DATABASES.values():
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                continue
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def create_bucket(endpoint_url: str | None, location: str) -> None:
    """Create the bucket of an s3:// location when it does not exist (development store)."""
    bucket = location.removeprefix("s3://").split("/", 1)[0]
    s3 = s3_client(endpoint_url)
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)


def s3_client(endpoint_url: str | None, timeout_s: float = 10) -> Any:
    """A boto3 S3 client for the endpoint (None: AWS), keys as s3_env gives them, one try."""
    import boto3
    from botocore.config import Config

    env = s3_env(endpoint_url)
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                        config=Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                                      retries={"max_attempts": 1}))


def s3_env(endpoint_url: str | None) -> dict[str, str]:
    """S3 client settings: the endpoint, and dummy keys for the local development store when
    none are set (real keys only from the environment or the secrets file)."""
    env = {"MLFLOW_S3_ENDPOINT_URL": endpoint_url} if endpoint_url else {}
    if endpoint_url and endpoint_url.startswith(f"http://{LOCAL_HOST}"):
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env[key] = os.environ.get(key, "testing")
    return env


def _postgres_service(project: Project, ep: Endpoints, port: int) -> Service:
    """The private cluster under <state>/postgres, TCP on 127.0.0.1 only, no Unix socket."""
    state, user = project.layout.root, pg_user()
    cluster, password = state / "postgres", local_password(state)

    def prepare() -> None:
        """Grant the cluster's account its way in (root only), then initdb once."""
        if user:
            _grant_traverse(state, user)
        init_cluster(cluster, password, user)

    cmd = [str(pg_bindir() / "postgres"), "-D", str(cluster / "data"), "-h", LOCAL_HOST,
           "-p", str(port), "-c", "unix_socket_directories="]
    return Service("postgres", cmd, ep.db_url, pg_ready(ep.db_url, password), prepare=prepare,
                   after=lambda: create_databases(ep.db_url, password), user=user, cwd=cluster)


def team_plan(project: Project, host: str, ports: dict[str, int]) -> list[Service]:
    """The team services on this machine: those whose endpoint is null in textloop.yaml `backend`
    (PostgreSQL, the S3 store, Prefect, MLflow), then the API and the flow runner."""
    cfg = project.params().backend
    mine = starts_locally(cfg)
    ep = endpoints(cfg, project.layout.root, ports)
    write_team_record(project.layout.root, ports, ep)
    py, out = sys.executable, []
    if mine["postgres"]:
        out.append(_postgres_service(project, ep, ports["postgres"]))
    if mine["s3"]:
        out.append(Service("s3", [py, "-m", "moto.server", "-H", LOCAL_HOST, "-p",
                                  str(ports["s3"])], ep.s3_endpoint_url,
                           _http_ok(f"{ep.s3_endpoint_url}/moto-api/"),
                           after=lambda: create_bucket(ep.s3_endpoint_url, ep.artifact_root),
                           env=s3_env(ep.s3_endpoint_url)))
    if mine["prefect"]:
        out.append(Service("prefect", [py, "-m", "prefect", "server", "start", "--host", LOCAL_HOST,
                                       "--port", str(ports["prefect"]), "--analytics-off"],
                           ep.prefect_api_url.removesuffix("/api"),
                           _http_ok(f"{ep.prefect_api_url}/health"),
                           env={"PREFECT_API_DATABASE_CONNECTION_URL": ep.prefect_db}))
    if mine["mlflow"]:
        out.append(Service("mlflow", [py, "-m", "mlflow", "server", "--backend-store-uri",
                                      ep.mlflow_db, "--artifacts-destination", ep.artifact_root,
                                      "--serve-artifacts", "--host", LOCAL_HOST, "--port",
                                      str(ports["mlflow"]), "--workers", "1"], ep.mlflow_url,
                           _http_ok(f"{ep.mlflow_url}/health"), env=s3_env(ep.s3_endpoint_url)))
    return out + [svc for svc in plan(project, host, ports) if svc.name == "serve"] + [
        worker_service(project, ep)]


def worker_service(project: Project, ep: Endpoints) -> Service:
    """`textloop worker` in this checkout (the team's lifecycle/monitor/gc deployments on the
    work pool), ready once the deployments exist; the DVC remote's bucket is made first on
    the development store."""
    cfg = project.params().backend
    return Service("worker", [sys.executable, "-m", "textloop.cli.team", "worker"], None,
                   _deployments_ready(ep.prefect_api_url, ["lifecycle", "monitor"]),
                   prepare=(lambda: create_bucket(ep.s3_endpoint_url, ep.dvc_remote))
                   if starts_locally(cfg)["s3"] else None)
