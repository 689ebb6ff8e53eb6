"""Production controls on the command line: `textloop gc`, `textloop shadow`, `textloop alerts`.

`register(app)` adds them to the main CLI (one line in textloop/cli/__init__._register_ops)."""

from __future__ import annotations

import json
import logging
from typing import Any

import typer

from textloop.cli.command_context import open_project, user_errors

log = logging.getLogger(__name__)
alerts_app = typer.Typer(help="Alert sinks: send a test event, show the delivery log.")


def _echo(data: Any, as_json: bool, lines: list[str]) -> None:
    """JSON on --json, else the human lines."""
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else "\n".join(lines))


def _size(n: int) -> str:
    """Bytes in a readable unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; remove nothing."),
       as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Mark crashed runs, purge deleted MLflow runs, garbage-collect the DVC cache (keeping the
    champion, the challenger, the newest gc.keep_versions versions and the workspace)."""
    from textloop.loop.gc import collect, reap_crashed

    project = open_project()
    reaped = {} if dry_run else reap_crashed(project, by="textloop gc")
    report = collect(project, dry_run=dry_run).to_dict()
    verb = "would remove" if dry_run else "removed"
    kept = ", ".join(f"v{k} ({why})" for k, why in report["protected_versions"].items())
    _echo({"reaped": reaped, **report}, as_json, [
        f"protected versions: {kept or 'none'}",
        (f"MLflow: {verb} {len(report['mlflow_runs'])} deleted runs, "
        f"{_size(report['mlflow_bytes'])}"),
        (f"DVC cache: {verb} {report['dvc_objects']} objects, {_size(report['dvc_bytes'])} "
        f"({report['dvc_kept']} kept)"),
        f"total: {_size(report['bytes'])}"]
        + ([f"crashed runs marked: {reaped.get('mlflow_failed', [])}"] if reaped else []))


def shadow(decide: bool = typer.Option(False, "--decide",
                                       help="Promote or retire the challenger now if the "
                                            "evidence suffices (recorded)."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Champion vs challenger on live traffic: agreement, paired live accuracy, McNemar."""
    from tasks.monitor.shadow_rule import compare
    from tasks.monitor.shadow_rule import decide as outlook
    from textloop.loop import db
    from textloop.loop.retrain_policy import policy_db_url
    from textloop.loop.shadow_decisions import shadow_policy, shadow_versions
    from textloop.pipeline import tracking
    from textloop.pipeline.registry import served_model

    project = open_project()
    if decide:
        out = shadow_policy(project)
        _echo(out, as_json, [f"{out['action']}: {out['reason']}"])
        return
    tracking.setup(project)
    params = project.params()
    champion, challenger = shadow_versions(served_model(project)[0], params)
    if challenger is None or champion is None:
        _echo({"champion": champion, "challenger": None}, as_json,
              [f"champion v{champion}; no challenger in shadow"])
        return
    pairs = db.read_shadow_pairs(db.open_db(policy_db_url(project)), champion, challenger,
                                 params.monitor.window)
    cmp = compare(pairs)
    action, reason = outlook(cmp, params.shadow)
    _echo({"champion": champion, "challenger": challenger, "comparison": cmp.to_dict(),
           "outlook": [action, reason]}, as_json,
          [f"champion v{champion} vs challenger v{challenger}", f"{action}: {reason}"])


def alerts_test(event: str = typer.Argument("alert_test", help="Event name to send.")) -> None:
    """Send one event to every sink subscribed to it and print each delivery (exit 1 when one
    was not delivered)."""
    from textloop.loop.alerts import emit_for

    project = open_project()
    deliveries = emit_for(project, event, {"message": "textloop alerts test"})
    for d in deliveries:
        typer.echo(f"{d.sink}: {'ok' if d.ok else 'FAILED'} ({d.status}, {d.attempts} attempts)")
    if not deliveries:
        typer.echo(f"no sink subscribes to {event!r} (alerts.webhooks, alerts.smtp)")
    if any(not d.ok for d in deliveries):
        raise typer.Exit(1)


def alerts_log(limit: int = typer.Option(20, help="Rows to show.")) -> None:
    """The newest alert deliveries."""
    from textloop.loop import db
    from textloop.loop.alerts import recent_deliveries
    from textloop.loop.retrain_policy import policy_db_url

    engine = db.open_db(policy_db_url(open_project()))
    for row in recent_deliveries(engine, limit):
        typer.echo(f"{row['created_at']:%Y-%m-%d %H:%M:%S} {row['event']:<20} "
                   f"{'ok' if row['ok'] else 'FAILED':<6} {row['attempts']}x {row['status']}  "
                   f"{row['sink']}")


def register(app: typer.Typer) -> None:
    """Add gc, shadow and alerts {test,log} to the textloop CLI."""
    app.command("gc")(user_errors(gc))
    app.command("shadow")(user_errors(shadow))
    alerts_app.command("test")(user_errors(alerts_test))
    alerts_app.command("log")(user_errors(alerts_log))
    app.add_typer(alerts_app, name="alerts")
