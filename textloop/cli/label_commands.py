"""`textloop label next N` (active learning) and `textloop label export`, added to the
`label` command group."""

from __future__ import annotations

import json
from typing import get_args

import typer

from textloop.core.config import ActiveConfig

# the names params.yaml accepts (tasks.label.active scores them): read from the config, so that every
# CLI command does not import pandas and scipy with tasks.label.active
STRATEGIES: tuple[str, ...] = get_args(ActiveConfig.model_fields["strategy"].annotation)


def _label_group(app: typer.Typer) -> typer.Typer:
    """The `label` sub-command group of the main app."""
    for group in app.registered_groups:
        if group.name == "label" and group.typer_instance is not None:
            return group.typer_instance
    raise RuntimeError("the CLI has no `label` command group")


def register(app: typer.Typer) -> None:
    """Add `label next` and `label export`."""
    from textloop.cli.command_context import open_project, user_errors

    label_app = _label_group(app)

    @label_app.command("next")
    @user_errors
    def label_next(
        n: int = typer.Argument(..., min=1, help="How many items to queue."),
        strategy: str | None = typer.Option(
            None, help=f"{' | '.join(STRATEGIES)} (default: label.active.strategy)"),
    ) -> None:
        """Score the labeling queue and the served traffic with the champion and write the N
        most informative, diverse items to paths.active_queue (the /label page's order)."""
        from textloop.core.errors import UserError
        from textloop.loop.active_queue import next_batch

        if strategy is not None and strategy not in STRATEGIES:
            raise UserError(f"--strategy: unknown strategy {strategy!r} "
                            f"(one of {', '.join(STRATEGIES)})")
        project = open_project()
        queue = next_batch(project, n, strategy)
        path = project.params().paths.active_queue
        typer.echo(json.dumps({"queued": len(queue), "file": path,
                               "by_origin": queue["origin"].value_counts().to_dict(),
                               "strategy": strategy or project.params().label.active.strategy}))

    @label_app.command("export")
    @user_errors
    def label_export() -> None:
        """Export the pending feedback (agreed /label answers and /feedback rows) to the
        DVC-versioned store now (what a fired retrain does first)."""
        from textloop.loop.label_store import export

        typer.echo(json.dumps(export(open_project())))


def status_lines(info: dict) -> list[str]:
    """`textloop status` lines for the label counts and the learning curve."""
    counts = info.get("label_counts") or {}
    shown = ", ".join(f"{k.replace('_', '-')} {'–' if v is None else v}" for k, v in counts.items())
    lines = [f"labels: {shown}"] if counts else []
    curve = info.get("learning_curve") or []
    if curve:
        lines.append("learning curve (labeled rows -> test accuracy): " + ", ".join(
            f"v{p['version']} {p['labeled_rows']} -> {p['accuracy']:.4f}" for p in curve))
    return lines
