"""Lineage and alias decisions on the command line: lineage, reproduce, history, rollback,
approve, reject, promote. `register(app)` adds them to `textloop`."""

from __future__ import annotations

import json
from typing import Any

import typer

from textloop.pipeline.history import os_user

REASON = typer.Option(..., "--reason", help="Why (mandatory; stored in the alias history).")
USER = typer.Option(None, "--user", help="Who decides (default: the OS user).")


def _context() -> tuple[Any, str, Any]:
    """(project, served model name, journal into the project's loop database)."""
    from textloop.cli.command_context import open_project
    from textloop.loop.aliases import db_journal, project_engine
    from textloop.pipeline import tracking
    from textloop.pipeline.registry import served_model

    project = open_project()
    tracking.setup(project)
    return project, served_model(project)[0], db_journal(project_engine(project))


def _said(move: Any) -> None:
    typer.echo(move.line())


def lineage_cmd(ref: str | None = typer.Argument(None, help="Version number or MLflow run id "
                                                 "(default: the champion)."),
                json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")
                ) -> None:
    """Which code, data, params, flow run and gate decision made a version, and its alias moves."""
    from textloop.cli.command_context import open_project
    from textloop.pipeline.lineage import lineage, render

    info = lineage(open_project(), ref)
    typer.echo(json.dumps(info, indent=2, default=str) if json_out else render(info))


def reproduce_cmd(version: str = typer.Argument(..., help="The registered version to rebuild."),
                  keep: bool = typer.Option(False, help="Keep the temporary worktree."),
                  json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")
                  ) -> None:
    """Rebuild a version in a temporary git worktree (code at its commit, its params.yaml and
    dvc.lock, data from the DVC cache), rerun the pipeline, report whether hashes and test
    metrics match. Exit 1 when they do not."""
    from flows.lifecycle import prepare_workspace
    from textloop.cli.command_context import open_project
    from textloop.pipeline.reproduce import render, reproduce

    report = reproduce(open_project(), version, prepare_workspace, keep=keep)
    typer.echo(json.dumps(report, indent=2, default=str) if json_out else render(report))
    if not report["match"]:
        raise typer.Exit(1)


def history_cmd(json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
                limit: int = typer.Option(50, help="Most recent moves shown.")) -> None:
    """Every alias move of the served model (loop database), newest first."""
    from textloop.loop.aliases import history, project_engine

    project, name, _ = _context()
    moves = history(project_engine(project), name, limit)
    if json_out:
        typer.echo(json.dumps([m.to_dict() for m in moves], indent=2))
        return
    for move in moves:
        _said(move)
    if not moves:
        typer.echo(f"no alias moves recorded for {name}")


def rollback_cmd(to: str | None = typer.Option(None, "--to", help="Version to go back to "
                                               "(default: the latest earlier champion still "
                                               "in the registry)."),
                 reason: str = REASON, user: str | None = USER,
                 force: bool = typer.Option(False, "--force", help="Allow a version that was "
                                            "never champion nor approved.")) -> None:
    """Move champion back (recorded as a manual decision); `textloop serve` follows it."""
    from textloop.loop.aliases import rollback

    _, name, journal = _context()
    _said(rollback(name, journal, reason=reason, user=user or os_user(), to=to, force=force))


def approve_cmd(version: str = typer.Argument(..., help="The pending version."),
                reason: str = REASON, user: str | None = USER) -> None:
    """Approve the pending version: it becomes champion."""
    from textloop.loop.aliases import approve

    _, name, journal = _context()
    _said(approve(name, version, journal, reason=reason, user=user or os_user()))


def reject_cmd(version: str = typer.Argument(..., help="The pending version."),
               reason: str = REASON, user: str | None = USER) -> None:
    """Reject the pending version: it is never served; the champion stays."""
    from textloop.loop.aliases import reject

    _, name, journal = _context()
    _said(reject(name, version, journal, reason=reason, user=user or os_user()))


def promote_cmd(version: str = typer.Argument(..., help="Any registered version."),
                force: bool = typer.Option(False, "--force", help="Required: this overrules "
                                           "the gate."),
                reason: str = REASON, user: str | None = USER) -> None:
    """Make a version champion against the gate (--force and a reason required)."""
    from textloop.core.errors import UserError
    from textloop.loop.aliases import force_promote

    if not force:
        raise UserError("promote overrules the gate: add --force (and --reason)")
    _, name, journal = _context()
    _said(force_promote(name, version, journal, reason=reason, user=user or os_user()))


def register(app: typer.Typer) -> None:
    """Add lineage, reproduce, history, rollback, approve, reject, promote to the CLI."""
    from textloop.cli.command_context import user_errors

    for name, fn in (("lineage", lineage_cmd), ("reproduce", reproduce_cmd),
                     ("history", history_cmd), ("rollback", rollback_cmd),
                     ("approve", approve_cmd), ("reject", reject_cmd),
                     ("promote", promote_cmd)):
        app.command(name)(user_errors(fn))
