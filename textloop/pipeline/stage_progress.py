"""What a user sees while the lifecycle runs: one line per stage when it ends, and while it runs
its steps (textloop.core.progress), taken from the stage's output as it is written. On a terminal
the running stage is a transient spinner showing its latest step; elsewhere each step is a plain
line, so a log file or CI job shows trial by trial where a run is."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Self, TextIO

from textloop.core.progress import STEP_PREFIX, on_terminal

PROGRESS = logging.getLogger("textloop.progress")  # the lines `textloop run` shows
POLL_S = 0.25  # how often a running stage's output is read for new step lines


class _ProgressHandler(logging.StreamHandler):
    """The handler `show_progress` installs (recognised when it is replaced); `owned`: its
    stream was opened for it, and is closed with it."""

    owned = False


def show_progress(stream: TextIO, owned: bool = False) -> None:
    """Show PROGRESS lines (bare messages) on `stream`, replacing an earlier call's handler
    (a test runner may have swapped the stream since); `owned`: close `stream` when replaced."""
    for old in [h for h in PROGRESS.handlers if isinstance(h, _ProgressHandler)]:
        PROGRESS.removeHandler(old)
        if old.owned:
            old.stream.close()
    handler = _ProgressHandler(stream)
    handler.owned = owned
    handler.setFormatter(logging.Formatter("%(message)s"))
    PROGRESS.addHandler(handler)
    PROGRESS.setLevel(logging.INFO)
    PROGRESS.propagate = False


def display_stream() -> TextIO | None:
    """The stream PROGRESS lines go to (None: nobody shows them, e.g. a deployment's run)."""
    found = [h.stream for h in PROGRESS.handlers if isinstance(h, _ProgressHandler)]
    return found[-1] if found else None


class StageDisplay:
    """The display of one running stage: `step(text)` shows its latest step."""

    def __init__(self, name: str, stream: TextIO | None) -> None:
        self.name, self.stream, self._bar, self._task = name, stream, None, None

    def __enter__(self) -> Self:
        if self.stream is not None and on_terminal(self.stream):
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=Console(file=self.stream),
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(f"{self.name:<10} running")
        return self

    def step(self, text: str) -> None:
        """A step line of the stage: the spinner's text on a terminal, else a line of its own."""
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.name:<10} {text}")
        else:
            PROGRESS.info("%-10s %s", self.name, text)

    def line(self, raw: str) -> None:
        """One line of the stage's output: shown when it is a step line, else ignored."""
        if raw.startswith(STEP_PREFIX):
            self.step(raw[len(STEP_PREFIX):].rstrip())

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextlib.contextmanager
def following(fd: int, on_line: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, hand every complete line appended to the file open at `fd` to
    `on_line` (read with pread: the writer's file offset is left alone); the rest once it ends."""
    stop = threading.Event()
    state = {"offset": 0, "partial": b""}

    def drain(final: bool) -> None:
        while chunk := os.pread(fd, 65536, state["offset"]):
            state["offset"] += len(chunk)
            *lines, state["partial"] = (state["partial"] + chunk).split(b"\n")
            for line in lines:
                on_line(line.decode("utf-8", errors="replace"))
        if final and state["partial"]:
            on_line(state["partial"].decode("utf-8", errors="replace"))

    def loop() -> None:
        while not stop.wait(POLL_S):
            drain(final=False)

    thread = threading.Thread(target=loop, name="stage-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        drain(final=True)


@contextlib.contextmanager
def captured_output(on_line: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """Send this process's stdout and stderr file descriptors (so also the stage command DVC
    starts, which inherits them) to a temporary file; the list yielded receives the text
    written once the block ends, and `on_line` each line as soon as it is written."""
    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 1)
        os.dup2(buf.fileno(), 2)
        try:
            with following(buf.fileno(), on_line) if on_line else contextlib.nullcontext():
                yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            buf.seek(0)
            out.append(buf.read().decode("utf-8", errors="replace"))
