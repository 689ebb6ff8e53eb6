"""The feedback/label store, versioned by DVC on every append.

Corrections and returned labels are the scarcest data a team has: a batch that is on disk but not
in the DVC cache is one `rm -r` away from being lost. So an append is only done when `dvc add`
succeeded; otherwise the new batch is removed again (the caller still has its rows: the input
file, or the loop database's pending feedback) and the failure is an error, never a warning."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
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


def _batch_files(folder: Path) -> list[Path]:
    """The feedback store's batch files in write order (none when the folder is absent)."""
    return sorted(folder.glob("batch-*.parquet")) if folder.is_dir() else []


def _replace_files(project: Project, folder: Path, new: dict[Path, pd.DataFrame | None]) -> None:
    """Write (None: remove) batch files, then version the store; on a DVC failure every file
    is put back as it was and StoreNotVersioned raised."""
    old = {path: path.read_bytes() for path in new}
    try:
        for path, rows in new.items():
            if rows is None:
                path.unlink()
            else:
                tmp = path.with_name(f".{path.name}.tmp")
                rows.to_parquet(tmp, index=False)
                tmp.replace(path)
        version_store(project, folder)
    except StoreNotVersioned:
        for path, data in old.items():
            path.write_bytes(data)
        raise


def retract_batch(project: Project, batch_id: str) -> dict[str, object]:
    """Take a batch back by its id (or file name): its files leave the store and the store is
    versioned again by DVC, so the retraction is a version like the import. Raises UserError
    naming the known batch ids when there is no such batch."""
    folder = project.path(project.params().paths.feedback)
    hits = {}
    known = []
    for path in _batch_files(folder):
        ids = set(pd.read_parquet(path).get("batch_id", pd.Series([path.stem])))
        known.extend(sorted(ids))
        if batch_id in ids or batch_id in (path.name, path.stem):
            hits[path] = None
    if not hits:
        raise UserError(f"{folder}: no batch {batch_id!r} (batches: "
                        f"{', '.join(dict.fromkeys(known)) or 'none'})")
    rows = sum(len(pd.read_parquet(path)) for path in hits)
    _replace_files(project, folder, hits)
    log.info("store: batch %s retracted (%d rows), versioned by DVC", batch_id, rows)
    return {"retracted": batch_id, "rows": rows, "files": sorted(p.name for p in hits)}


def adopt_untagged(project: Project, task: str) -> dict[str, object]:
    """Give the labels stored before labels carried a task (no task column, or "") to `task`:
    the batches holding them are rewritten with it and the store versioned again by DVC, so
    the adoption is a version like an import (and a retraction). Rows adopted and files."""
    folder = project.path(project.params().paths.feedback)
    new: dict[Path, pd.DataFrame | None] = {}
    adopted = 0
    for path in _batch_files(folder):
        rows = pd.read_parquet(path)
        untagged = (rows["task"].fillna("").astype(str).eq("") if "task" in rows
                    else pd.Series(True, index=rows.index))
        if untagged.any():
            adopted += int(untagged.sum())
            new[path] = rows.assign(task=rows.get("task", pd.Series("", index=rows.index))
                                    .where(~untagged, task))
    if new:
        _replace_files(project, folder, new)
        log.info("store: %d untagged label(s) adopted by task %s, versioned by DVC", adopted, task)
    return {"adopted": adopted, "task": task, "files": sorted(p.name for p in new)}


def rewrite_store(project: Project, drop: Callable[[pd.DataFrame], pd.Series]) -> int:
    """Rewrite the batches holding rows `drop` marks without them (a batch left empty is
    removed) and version the store again: how erasure reaches exported labels. Rows removed."""
    folder = project.path(project.params().paths.feedback)
    new: dict[Path, pd.DataFrame | None] = {}
    removed = 0
    for path in _batch_files(folder):
        rows = pd.read_parquet(path)
        hit = drop(rows)
        if hit.any():
            removed += int(hit.sum())
            new[path] = rows[~hit] if (~hit).any() else None
    if new:
        _replace_files(project, folder, new)
    return removed
