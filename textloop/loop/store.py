"""The feedback/label store, versioned by DVC on every append.

Corrections and returned labels are the scarcest data a team has: a batch that is on disk but not
in the DVC cache is one `rm -r` away from being lost. So an append is only done when `dvc add`
succeeded; otherwise the new batch is removed again (the caller still has its rows: the input
file, or the loop database's pending feedback) and the failure is an error, never a warning."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tasks.feedback import append_batch
from textloop.core.errors import UserError
from textloop.core.layout import Project

log = logging.getLogger(__name__)


class StoreNotVersioned(UserError):
    """`dvc add` of the store failed: the append was rolled back."""


def version_store(project: Project, folder: Path) -> None:
    """`dvc add` the store folder (waiting for DVC's repo lock rather than failing on it).

    Raises StoreNotVersioned with DVC's own last error line."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "add", "--quiet",
                           str(folder)], cwd=project.root, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise StoreNotVersioned(f"{folder}: dvc add failed: {lines[-1] if lines else 'no output'}")


def append_versioned(project: Project, rows: pd.DataFrame, source: str) -> Path:
    """Append one immutable batch to the project's store and version it; the batch file.

    Raises StoreNotVersioned (the batch removed again) when DVC cannot version it."""
    folder = project.path(project.params().paths.feedback)
    batch = append_batch(folder, rows, source)
    try:
        version_store(project, folder)
    except StoreNotVersioned:
        batch.unlink(missing_ok=True)
        raise
    log.info("store: %d rows in %s, versioned by DVC", len(rows), batch.name)
    return batch
