"""Progress of long steps: plain lines off a terminal, a live display on one; a running stage's
step lines are taken from its output while it is written."""

from __future__ import annotations

import io
import logging
import os
import tempfile

import pytest

from textloop.core.progress import LOG_FORMAT, STEP_PREFIX, STEPS, marks, step, track
from textloop.pipeline.stage_progress import (
    PROGRESS,
    StageDisplay,
    display_stream,
    following,
    show_progress,
)


class _Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def steps_seen():
    """The messages logged to textloop.steps during the test."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler, level = Keep(), STEPS.level
    STEPS.addHandler(handler)
    STEPS.setLevel(logging.INFO)
    yield seen
    STEPS.removeHandler(handler)
    STEPS.setLevel(level)


def test_marks_every_item_of_a_short_loop_and_about_ten_of_a_long_one():
    assert marks(5) == {1, 2, 3, 4, 5}
    long = marks(1000)
    assert len(long) == 10 and max(long) == 1000 and min(long) == 100


def test_track_off_a_terminal_writes_one_line_per_marked_item(steps_seen):
    assert list(track(range(3), 3, "predict", stream=io.StringIO())) == [0, 1, 2]
    assert steps_seen == ["predict 1/3 batches", "predict 2/3 batches", "predict 3/3 batches"]


def test_track_on_a_terminal_draws_a_bar_and_logs_no_lines(steps_seen):
    tty = _Tty()
    assert list(track(range(4), 4, "predict", stream=tty)) == [0, 1, 2, 3]
    assert steps_seen == [] and "predict" in tty.getvalue()


def test_a_step_line_reads_as_the_log_format_makes_it():
    record = logging.LogRecord(STEPS.name, logging.INFO, __file__, 1, "trial %d/%d", (1, 6), None)
    assert logging.Formatter(LOG_FORMAT).format(record) == f"{STEP_PREFIX}trial 1/6"


def test_stage_display_off_a_terminal_prints_each_step_as_a_line():
    out = io.StringIO()
    show_progress(out)
    assert display_stream() is out
    with StageDisplay("optimize", display_stream()) as display:
        display.line(f"{STEP_PREFIX}trial 1/2 C=1.0 accuracy 0.7000")
        display.line("INFO mlflow.tracking: something else")  # not a step: not shown
        display.line(f"{STEP_PREFIX}trial 2/2 C=4.0 accuracy 0.7100")
    assert out.getvalue().splitlines() == ["optimize   trial 1/2 C=1.0 accuracy 0.7000",
                                           "optimize   trial 2/2 C=4.0 accuracy 0.7100"]
    show_progress(io.StringIO())  # replaces the handler: one handler, never two
    assert sum(1 for h in PROGRESS.handlers if h.stream is out) == 0


def test_stage_display_on_a_terminal_shows_a_spinner_not_lines():
    tty = _Tty()
    show_progress(tty)
    with StageDisplay("train", display_stream()) as display:
        display.step("fitting on 300 rows")
    assert "train" in tty.getvalue()
    assert "train      fitting on 300 rows\n" not in tty.getvalue()  # no plain line


def test_following_reads_lines_while_the_writer_writes():
    """A writer sharing the file (as a stage process shares the captured stderr) appends; the
    follower sees complete lines, and a last line without a newline when the block ends."""
    seen: list[str] = []
    with tempfile.TemporaryFile() as buf:
        with following(buf.fileno(), seen.append):
            os.write(buf.fileno(), b"first\nsec")
            os.write(buf.fileno(), b"ond\nlast")
        assert os.lseek(buf.fileno(), 0, os.SEEK_CUR) == len(b"first\nsecond\nlast")
    assert seen == ["first", "second", "last"]


def test_step_is_a_log_record_of_textloop_steps(steps_seen):
    step("scoring %d rows", 45)
    assert steps_seen == ["scoring 45 rows"]
