"""A failed stage becomes one error line that names what went wrong, not only DVC's exit code."""

from __future__ import annotations

from flows.lifecycle import failure_line

TRACEBACK = [
    '  File "/p/tasks/train/baseline.py", line 512, in fit_block',
    "    raise ValueError(",
    "ValueError: no word terms occur in >= min_df=1000000 documents",
    ("ERROR: failed to reproduce 'train': failed to run: sh scripts/stage.sh .textloop/python "
     "train, exited with 1"),
]


def test_an_uncaught_exception_names_the_failure():
    assert failure_line(TRACEBACK) == ("ValueError: no word terms occur in >= "
                                       "min_df=1000000 documents")


def test_textloop_own_error_line_comes_first():
    lines = ["error: data/x.csv, row 3, column label: empty label", *TRACEBACK]
    assert failure_line(lines) == "error: data/x.csv, row 3, column label: empty label"


def test_an_interrupt_and_a_dotted_exception_are_named_too():
    assert failure_line(["Traceback (most recent call last):", "KeyboardInterrupt"]) == \
        "KeyboardInterrupt"
    assert failure_line(["sqlalchemy.exc.OperationalError: database is locked"]) == \
        "sqlalchemy.exc.OperationalError: database is locked"


def test_output_without_either_leaves_dvcs_reason():
    assert failure_line(["train: fitting", "ERROR: failed to reproduce 'train'"]) is None
