"""Progress of long steps: a live bar on a terminal, plain lines anywhere else.

A step is reported through the logger `textloop.steps`. Inside a stage process (which DVC starts
with its output going to a file, never a terminal) each step becomes one log line, which the flow
process picks out of the stage's output while it runs (`STEP_PREFIX`) and shows as that stage's
progress (textloop.pipeline.stage_progress). In a command run on a terminal, `track` draws a rich
progress bar instead."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")
STEPS = logging.getLogger("textloop.steps")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the format every textloop command logs in
STEP_PREFIX = f"INFO {STEPS.name}: "  # how a step line starts in a stage's output (LOG_FORMAT)
PLAIN_LINES = 10  # at most about this many lines per tracked loop when not on a terminal
VERBOSE_ENV = "TEXTLOOP_VERBOSE"  # "1": show everything (`textloop run --verbose`), else quiet


def verbose() -> bool:
    """Whether the user asked to see everything, libraries' chatter included."""
    return os.environ.get(VERBOSE_ENV) == "1"


@contextlib.contextmanager
def library_chatter(logger: logging.Logger) -> Iterator[None]:
    """Keep what a library prints to stderr inside the block (MLflow's "Successfully registered
    model ...", its tqdm bars) out of the default output: sent to `logger` at DEBUG instead,
    unless the user asked for everything (`verbose`)."""
    if verbose():
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        if text := buffer.getvalue().strip():
            logger.debug("%s", text)


def step(message: str, *args: object) -> None:
    """Report one step of a long piece of work (`message % args`)."""
    STEPS.info(message, *args)


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default: stderr) is a terminal a live display can redraw."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced by a test runner
        return False


def marks(total: int, lines: int = PLAIN_LINES) -> set[int]:
    """The counts (1-based) after which a plain line is written: every item of a short loop,
    about `lines` evenly spaced ones (the last included) of a long one."""
    if total <= 2 * lines:
        return set(range(1, total + 1))
    return {round(total * k / lines) for k in range(1, lines + 1)}


def track(items: Iterable[T], total: int, label: str, unit: str = "batches",
          stream: TextIO | None = None) -> Iterator[T]:
    """`items` unchanged, with progress: a transient rich bar when `stream` (default stderr) is
    a terminal, else a step line `label i/total unit` after the marked items (see `marks`)."""
    stream = sys.stderr if stream is None else stream
    if on_terminal(stream):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        columns = ("[progress.description]{task.description}", BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(file=stream), transient=True) as bar:
            task = bar.add_task(f"{label} ({unit})", total=total)
            for item in items:
                yield item
                bar.advance(task)
        return
    shown = marks(total)
    for done, item in enumerate(items, 1):
        yield item
        if done in shown:
            step("%s %d/%d %s", label, done, total, unit)
