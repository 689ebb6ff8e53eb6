"""Operations commands of the loop: serve, monitor, deploy-flows, up, down.

`register(app)` adds them to the main `textloop` CLI; `python -m textloop.cli.ops` runs them
alone (that is how `textloop up` starts the API and the flow runner)."""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from typing import Any

import typer

from textloop.cli.command_context import open_project, user_errors
from textloop.core.config import where_set
from textloop.core.errors import UserError

log = logging.getLogger(__name__)


def _checked_project() -> Any:
    """The project with params.yaml fully validated (cron and time zone included) before any
    service or schedule starts: a bad value is one line and exit 2, nothing left running."""
    from textloop.core.config import load_params

    project = open_project()
    load_params(project.params_path, edge=True)
    return project


def serve(host: str | None = typer.Option(None, help=f"Bind address (default: "
                                          f"{where_set('serve.host')})."),
          port: int | None = typer.Option(None, help=f"Port (default: {where_set('serve.port')})."),
          ) -> None:
    """Serve models:/<name>@champion over HTTP (hot reload when the alias moves)."""
    import uvicorn

    from textloop.serve.app import create_app
    from textloop.serve.settings import from_project

    project = open_project()
    settings = from_project(project)
    cfg = settings.params.serve
    sock = bound_socket(host or cfg.host, port or cfg.port)  # before the model loads
    logging.getLogger(__name__).info("serving %s of project %s (MLflow %s)", settings.model_name,
                                     project.root, os.environ.get("MLFLOW_TRACKING_URI"))
    config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def bound_socket(host: str, port: int) -> Any:
    """A listening socket on host:port, bound as uvicorn binds it; a port already taken is one
    line naming it and the settings that choose another, before anything loads (uvicorn's own
    error came after the model loaded, as a log line with exit 3)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = ("is in use by another process" if exc.errno == errno.EADDRINUSE
               else f"cannot be bound ({exc.strerror})")
        raise UserError(f"{host}:{port} {why}; stop it or serve elsewhere with --port "
                        "(or serve.port in textloop.yaml)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def monitor(act: bool = typer.Option(True, help="Run the retrain policy on the report.")) -> None:
    """Run the monitor flow once: report live accuracy and drift, then the retrain policy."""
    from textloop.cli import prefect_server

    project = open_project()  # first: Prefect reads its settings when first imported
    # the server a run uses (project server, or a temporary one waited for as long): Prefect's
    # own ephemeral server gave up after its short start-up timeout with a traceback under load
    server = prefect_server.start_early(project)
    try:
        from flows.monitor_flow import monitor as monitor_flow
    except BaseException:
        if server is not None:
            server.abandon()
        raise
    prefect_server.use(server)

    typer.echo(json.dumps(monitor_flow(act=act), indent=2, default=str))


def deployments(project: Any) -> list[Any]:
    """`lifecycle` on the params cron (one run at a time) and `monitor` on its interval."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    from flows.lifecycle import lifecycle
    from flows.maintenance import gc_flow
    from flows.monitor_flow import monitor as monitor_flow

    sched = project.params().schedule
    lc_sched = [Cron(sched.lifecycle_cron, timezone=sched.timezone)] if sched.lifecycle_cron else []
    mon_sched = ([Interval(timedelta(minutes=sched.monitor_interval_minutes),
                           timezone=sched.timezone)] if sched.monitor_interval_minutes else [])
    by_module = EntrypointType.MODULE_PATH  # runs load flows.* from the package, any cwd
    # team: workers may die mid-run; Prefect would keep a dead run's deployment slot, while the
    # workspace lock (PostgreSQL, freed with its holder) keeps one lifecycle run at a time
    lc_limit = None if project.params().backend.profile == "team" else 1
    return [lifecycle.to_deployment(name="lifecycle", schedules=lc_sched, concurrency_limit=lc_limit,
                                    tags=["textloop"], entrypoint_type=by_module,
                                    description="ingest → … → deploy; start with parameters "
                                                "from the UI (Custom run)."),
            monitor_flow.to_deployment(name="monitor", schedules=mon_sched, concurrency_limit=1,
                                       tags=["textloop"], entrypoint_type=by_module),
            gc_flow.to_deployment(name="gc", concurrency_limit=1, tags=["textloop"],
                                  entrypoint_type=by_module, schedules=_gc_schedule(project))]


def _gc_schedule(project: Any) -> list[Any]:
    """The gc flow every gc.interval_minutes (none when null)."""
    from prefect.schedules import Interval

    p = project.params()
    minutes = p.gc.interval_minutes
    return [Interval(timedelta(minutes=minutes), timezone=p.schedule.timezone)] if minutes else []


def deploy_flows() -> None:
    """Register the lifecycle and monitor deployments and execute their runs (blocks)."""
    project = _checked_project()  # first: Prefect reads its settings when first imported
    from prefect import serve as prefect_serve

    from textloop.loop.prefect_api import api_configured

    if not api_configured():
        from textloop.core.errors import UserError

        raise UserError("no Prefect server: run `textloop up` or set PREFECT_API_URL")
    prefect_serve(*deployments(project), print_starting_message=False)


def up(host: str = typer.Option("127.0.0.1", help="Bind address of every service."),
       prefect_port: int = typer.Option(4200), mlflow_port: int = typer.Option(5000),
       port: int | None = typer.Option(None, help=f"API port (default: "
                                       f"{where_set('serve.port')})."),
       timeout: float = typer.Option(180, help="Seconds to wait for each service."),
       profile: str | None = typer.Option(None, help=f"local | team (default: "
                                          f"{where_set('backend.profile')})."),
       pg_port: int = typer.Option(55432, help="team: port of the private PostgreSQL."),
       s3_port: int = typer.Option(9000, help="team: port of the development S3 store.")) -> None:
    """Start Prefect server + UI, MLflow UI, the prediction API and the flow runner; with the
    team profile first PostgreSQL and an S3 store, MLflow and Prefect on them."""
    from textloop import services
    from textloop.core.errors import UserError

    project = _checked_project()
    chosen = profile or project.params().backend.profile
    if chosen not in ("local", "team"):
        raise UserError(f"--profile {chosen!r}: expected local or team")
    if chosen != project.params().backend.profile:  # clients read the profile from its file
        from textloop.core.config import apply_overrides

        apply_overrides(project.params_path, {"backend.profile": chosen})
        typer.echo(f"{where_set('backend.profile')} set to {chosen}")
    ports = {"prefect": prefect_port, "mlflow": mlflow_port, "postgres": pg_port, "s3": s3_port,
             "serve": port or project.params().serve.port}
    if chosen == "local":  # one Prefect server per project: up's replaces a run's
        from textloop.cli.prefect_server import handed_over

        with handed_over(project):
            records = services.up(project, host, ports, timeout, profile=chosen)
    else:
        records = services.up(project, host, ports, timeout, profile=chosen)
    for rec in records:
        typer.echo(f"{rec['name']:8} pid {rec['pid']:<7} {rec['url'] or '(flow runner)'}  "
                   f"log: {rec['log']}")
        if rec["name"] == "mlflow" and rec["url"]:
            _mlflow_links(project, rec["url"])
    typer.echo(f"API token: ${project.params().serve.token_env} or "
               f"{project.layout.api_token}")


def _mlflow_links(project: Any, url: str) -> None:
    """The MLflow UI pages a user wants first: the runs of textloop, the served model."""
    from textloop.pipeline import tracking
    from textloop.pipeline.registry import served_model

    typer.echo(f"{'':8} runs of textloop: {tracking.ui_url(url, tracking.setup(project))}")
    typer.echo(f"{'':8} registered model: {tracking.model_ui_url(url, served_model(project)[0])}")


def down() -> None:
    """Stop the services `textloop up` started."""
    from textloop import services

    stopped = services.down(open_project())
    typer.echo("stopped: " + (", ".join(stopped) or "nothing was running"))


def register(app: typer.Typer) -> None:
    """Add serve, monitor, deploy-flows, up and down to the textloop CLI."""
    for name, fn in (("serve", serve), ("monitor", monitor), ("deploy-flows", deploy_flows),
                     ("up", up), ("down", down)):
        app.command(name)(user_errors(fn))


def main() -> None:
    """`python -m textloop.cli.ops ...`: these commands without the rest of the CLI."""
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
