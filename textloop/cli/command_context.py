"""What every `textloop` command shares: the project it works on (found above the cwd, its state
configured, attached to a running Prefect server) and how a user error is reported (one line on
stderr, exit code 2)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from textloop.core.errors import UserError
from textloop.core.progress import LOG_FORMAT, verbose

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
        except Exception as exc:
            if not _database_locked(exc):
                raise
            console.print("[red]error:[/red] a project database is locked by another process "
                          f"({_first_line(exc)}); let that process finish or stop it, then run "
                          "again", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _database_locked(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) is SQLite's 'database is locked' after its wait ran out
    (taken after open_project checked the MLflow store, or on another database)."""
    seen = 0
    while exc is not None and seen < 10:
        if "database is locked" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _first_line(exc: BaseException) -> str:
    """The first line of an error message (SQLAlchemy's run to several, with the SQL)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def open_project(prefect: bool = True) -> Any:
    """Find the project above the cwd and point all state into it; runs show up in the UI of a
    server `textloop up` started (`prefect` False: a command that never talks to Prefect, such
    as a stage process, skips looking for it)."""
    from textloop.core.layout import configure, find_project

    project = find_project()
    configure(project)
    _wait_for_tracking_store(project)
    if prefect:
        from textloop.services import use_running_prefect

        use_running_prefect(project)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose():
        quiet_libraries()
    return project


def quiet_progress() -> None:
    """The default output of a run and of a stage (as `dvc repro` / `dvc exp run` show it): one
    line per stage or step (`textloop.steps`: each optimize trial once) and every warning; other
    INFO lines (registry alias moves, a task's own trial line) only under --verbose
    (TEXTLOOP_VERBOSE=1, which stage processes inherit)."""
    from textloop.core.progress import STEPS

    if verbose():
        return
    logging.getLogger().setLevel(logging.WARNING)
    STEPS.setLevel(logging.INFO)


def _wait_for_tracking_store(project: Any) -> None:
    """The local MLflow store (SQLite) held locked by another process is waited for up to
    backend.db_lock_wait_s, then named in one line (MLflow's own error is a traceback); a
    store copied or moved with its project is made to point at this project's artifacts."""
    from textloop.core.files import wait_for_sqlite
    from textloop.core.moved_store import adopt_moved_store

    backend = project.params().backend
    if backend.profile == "local":
        wait_for_sqlite(project.layout.mlflow_db, backend.db_lock_wait_s)
        # a moved or copied project: the store's artifact locations follow it
        adopt_moved_store(project.layout.mlflow_db, project.layout.root, project.root.resolve())


class _NoMlflowAdvisories(logging.Filter):
    """Drops MLflow's advisory UserWarnings (type hints, cloudpickle); other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the record when it is one of MLflow's advisory UserWarnings."""
        text = record.getMessage()
        return not (f"{os.sep}mlflow{os.sep}" in text and "UserWarning" in text)


def quiet_libraries() -> None:
    """Default output shows what the user needs: MLflow's advisories and log lines below ERROR,
    its artifact download bars and every tqdm bar (transformers, datasets) are hidden, here and
    in the stage processes this one starts (environment). TEXTLOOP_VERBOSE=1 (`run --verbose`)
    skips this."""
    # MLflow re-enables its UserWarnings inside its calls (catch_warnings + "once"), so a
    # warnings filter cannot hide them: route warnings through logging and filter there.
    logging.captureWarnings(True)
    py_warnings = logging.getLogger("py.warnings")
    if not any(isinstance(f, _NoMlflowAdvisories) for f in py_warnings.filters):
        py_warnings.addFilter(_NoMlflowAdvisories())
    os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"  # read when mlflow is imported
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # in case it already was
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["TQDM_DISABLE"] = "1"  # tqdm's own switch, read by every bar it draws
