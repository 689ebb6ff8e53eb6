"""The team profile's commands: `textloop doctor` (one line per service of the configured
backend profile: reachable, version, what is wrong; exit 0 when every one is healthy, else 1),
`textloop worker` (a Prefect process worker in this checkout) and `textloop pull` (a version's
data from the DVC remote)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from textloop.cli.command_context import open_project
from textloop.core.config import where_set

TIMEOUT_S = 3.0  # per probe: a dead endpoint must not hang the doctor


@dataclass(frozen=True)
class Check:
    """The verdict on one service: ok, and what was found (version) or what is wrong."""

    service: str
    endpoint: str
    ok: bool
    detail: str

    def renamed(self, service: str) -> Check:
        """The same verdict under another service name (the DVC remote is an S3 check)."""
        return Check(service, self.endpoint, self.ok, self.detail)

    def line(self) -> str:
        """`ok   mlflow   http://...  MLflow 3.1`, one line for the terminal."""
        return f"{'ok ' if self.ok else 'BAD'}  {self.service:9} {self.endpoint}  {self.detail}"


def _guard(service: str, endpoint: str, probe: Callable[[], str]) -> Check:
    """Run a probe; any exception is the one-line reason the service is unhealthy."""
    try:
        return Check(service, endpoint, True, probe())
    except Exception as exc:  # noqa: BLE001 - the doctor reports every failure, it never raises
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check(service, endpoint, False, f"{type(exc).__name__}: {reason}"[:300])


def check_postgres(url: str) -> Check:
    """Log in (password: PGPASSWORD) and read the server version."""
    from textloop.services import libpq_url

    def probe() -> str:
        """The server's version string."""
        import psycopg
        from sqlalchemy.engine import make_url

        with psycopg.connect(libpq_url(url, make_url(url).database or "postgres"),
                             connect_timeout=int(TIMEOUT_S)) as conn:
            return "PostgreSQL " + str(conn.execute("SHOW server_version").fetchone()[0])

    return _guard("postgres", _safe(url), probe)


def check_s3(endpoint_url: str | None, location: str) -> Check:
    """The bucket of `location` exists and answers (keys from the environment)."""
    from textloop.services import s3_client

    def probe() -> str:
        """The bucket and the server's name."""
        s3 = s3_client(endpoint_url, TIMEOUT_S)
        bucket = location.removeprefix("s3://").split("/", 1)[0]
        head = s3.head_bucket(Bucket=bucket)
        server = head["ResponseMetadata"]["HTTPHeaders"].get("server", "S3")
        return f"bucket {bucket} reachable ({server})"

    return _guard("s3", endpoint_url or location, probe)


def check_http(service: str, health: str, version: str, parse: Callable[[Any], str]) -> Check:
    """GET the health URL (2xx), then the version URL (parsed for the line)."""

    def probe() -> str:
        """The service's version as it reports it."""
        import httpx

        for url in (health, version):
            resp = httpx.get(url, timeout=TIMEOUT_S)
            if not resp.is_success:
                raise RuntimeError(f"HTTP {resp.status_code} from {url}: {resp.text[:200]}")
        return parse(resp)

    return _guard(service, health, probe)


def _safe(url: str) -> str:
    """A URL as printable (any password masked)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def team_checks(project: Any) -> list[Check]:
    """Every team endpoint: PostgreSQL, S3, MLflow, Prefect, and the API `up` starts."""
    from textloop.core.backend import endpoints

    params = project.params()
    ep = endpoints(params.backend, project.layout.root)
    return [check_postgres(ep.db_url), check_s3(ep.s3_endpoint_url, ep.artifact_root),
            check_http("mlflow", f"{ep.mlflow_url}/health", f"{ep.mlflow_url}/version",
                       lambda r: f"MLflow {r.text.strip()}"),
            check_http("prefect", f"{ep.prefect_api_url}/health",
                       f"{ep.prefect_api_url}/admin/version", lambda r: f"Prefect {r.json()}"),
            check_s3(ep.s3_endpoint_url, ep.dvc_remote).renamed("dvc"),
            check_pool(ep.prefect_api_url, params.backend.work_pool), api_check(project)]


def check_pool(api: str, name: str) -> Check:
    """The work pool exists on the Prefect API `api`, and at least one worker is online (REST,
    the API key from PREFECT_API_KEY when set: this process's Prefect settings may be stale)."""

    def probe() -> str:
        """The pool's type and its online workers."""
        import httpx

        key = os.environ.get("PREFECT_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        pool = httpx.get(f"{api}/work_pools/{name}", headers=headers, timeout=TIMEOUT_S)
        if pool.status_code == 404:
            raise RuntimeError("no such work pool: start `textloop worker` (it creates it)")
        pool.raise_for_status()
        workers = httpx.post(f"{api}/work_pools/{name}/workers/filter", json={},
                             headers=headers, timeout=TIMEOUT_S)
        workers.raise_for_status()
        online = [w for w in workers.json() if w.get("status") == "ONLINE"]
        if not online:
            raise RuntimeError(f"no worker online ({len(workers.json())} known): run "
                               f"`textloop worker` in a checkout")
        return f"{pool.json()['type']} pool, {len(online)} worker(s) online"

    return _guard("pool", name, probe)


def api_check(project: Any) -> Check:
    """The prediction API (the one `up` started, else the serve.host:port settings) is healthy:
    a champion loaded."""
    from textloop.services import running

    cfg, rec = project.params().serve, running(project, "serve")
    base = rec["url"].removesuffix("/dashboard") if rec else f"http://{cfg.host}:{cfg.port}"
    return check_http("api", f"{base}/health", f"{base}/model",
                      lambda r: f"serving {r.json().get('name')} v{r.json().get('version')}")


def local_checks(project: Any) -> list[Check]:
    """The local profile: the MLflow SQLite store, a Prefect server if one is configured."""
    import mlflow

    uri = os.environ["MLFLOW_TRACKING_URI"]
    checks = [_guard("mlflow", uri, lambda: f"local store, MLflow {mlflow.__version__}")]
    api = os.environ.get("PREFECT_API_URL")
    if api:
        checks.append(check_http("prefect", f"{api}/health", f"{api}/admin/version",
                                 lambda r: f"Prefect {r.json()}"))
    else:
        checks.append(project_server_check(project))
    return checks


def project_server_check(project: Any) -> Check:
    """The project Prefect server `textloop run` keeps between runs (textloop.cli.prefect_server):
    its URL and state when one runs, else the line that runs start their own."""
    from textloop.cli.prefect_server import describe

    info = describe(project)
    if info is None:
        return Check("prefect", "(project server)", True, "not running; the next run starts one")
    return Check("prefect", str(info["api_url"]), bool(info["healthy"]),
                 f"project server pid {info['pid']}, "
                 + ("in use" if info["in_use"] else f"idle {info['idle_for_minutes']} min")
                 if info["healthy"] else f"project server pid {info['pid']} does not answer")


def doctor() -> None:
    """Check every service of the configured backend profile: one line each; exit 1 if any
    is unhealthy."""

    project = open_project()
    team = project.params().backend.profile == "team"
    checks = team_checks(project) if team else local_checks(project)
    for check in checks:
        typer.echo(check.line())
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def worker(pool: str | None = typer.Option(None, help=f"Work pool (default: "
                                           f"{where_set('backend.work_pool')}).")) -> None:
    """Run a Prefect process worker for the team's work pool in this checkout: it registers
    the lifecycle, monitor and gc deployments (their runs execute in the picking worker's own
    folder), then executes runs from the pool until stopped. Needs backend.profile: team."""
    from textloop.cli.ops import _checked_project, deployments
    from textloop.core.errors import UserError
    from textloop.loop.prefect_api import api_configured, apply_to_pool, ensure_work_pool

    project = _checked_project()
    backend = project.params().backend
    if backend.profile != "team":
        raise UserError("textloop worker serves the team work pool: set backend.profile: team "
                        "(or use `textloop up`, whose flow runner serves local runs)")
    if not api_configured():
        raise UserError("no Prefect server: set backend.prefect_api_url or run "
                        "`textloop up --profile team`")
    name = pool or backend.work_pool
    if ensure_work_pool(name):
        typer.echo(f"created process work pool {name}")
    apply_to_pool(deployments(project), name)
    typer.echo(f"worker for pool {name} in {project.root}")
    sys.stdout.flush()
    # the worker (and the flow runs it starts) inherit this environment: the project's server
    # URLs and TEXTLOOP_PROJECT, where each run executes
    os.execv(sys.executable, [sys.executable, "-m", "prefect", "worker", "start", "--pool", name,
                              "--type", "process", "--name",
                              f"textloop-{socket.gethostname()}-{os.getpid()}"])


def pull(version: str | None = typer.Argument(None, help="Version number or MLflow run id "
                                              "(default: the champion).")) -> None:
    """Bring a registered version's data here (team profile): its dvc.lock and params.yaml
    from the lineage record, then `dvc pull` of their outputs from the team remote."""
    import json as _json

    from textloop.core.errors import UserError
    from textloop.pipeline import registry, remote
    from textloop.pipeline.lineage import ARTIFACT, resolve_version
    from textloop.pipeline.tracking import setup

    project = open_project()
    if not remote.enabled(project):
        raise UserError("textloop pull reads the team DVC remote: set backend.profile: team")
    setup(project)
    _, mv = resolve_version(project, version)
    text = registry.run_text(mv.run_id, ARTIFACT)
    record = {**(_json.loads(text) if text else {}), "version": str(mv.version)}
    done = remote.checkout_version(project, record)
    typer.echo(f"version {done['version']}: {len(done['paths'])} outputs pulled in "
               f"{done['seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    """Add `doctor`, `worker` and `pull` to the textloop CLI."""
    from textloop.cli.ops import user_errors

    for name, fn in (("doctor", doctor), ("worker", worker), ("pull", pull)):
        app.command(name)(user_errors(fn))


def main() -> None:
    """`python -m textloop.cli.team ...`: these commands alone (how `up` starts the worker)."""
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
