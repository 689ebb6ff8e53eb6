"""What every `textloop` command shares: the project it works on (found above the cwd, its state
configured, attached to a running Prefect server) and how a user error is reported (one line on
stderr, exit code 2)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from textloop.core.errors import UserError

console = Console(stderr=True)
_ECHOED = "error: "  # how a stage subprocess's own error line starts (streamed to stderr already)
QUIET_LOGGERS = ("httpx", "alembic", "mlflow.store.db.utils")  # one line per API call/migration


def error_line(exc: UserError) -> str:
    """The line to print for a user error, printed once: a failed stage's own 'error: ...' line
    was already streamed live from its process, so it is pointed to, not repeated."""
    head, sep, _ = str(exc).partition(f": {_ECHOED}")
    if sep and head.startswith("stage "):
        return f"{head} (its error is printed above)"
    return str(exc)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes become one clear line on stderr and exit code 2 (no traceback); a decision
    a concurrent one beat (DecisionConflict) exits 3 the same way."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            console.print(f"[red]error:[/red] {error_line(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None

    return wrapper


def open_project() -> Any:
    """Find the project above the cwd and point all state into it; runs show up in the UI of a
    server `textloop up` started."""
    from textloop.core.layout import configure, find_project
    from textloop.services import use_running_prefect

    project = find_project()
    configure(project)
    use_running_prefect(project)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return project
