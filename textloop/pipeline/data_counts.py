"""How many rows a run read, set aside and trained on: one summary line from the stage reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textloop.core.layout import Project
from textloop.pipeline.tracking import read_json


def _report(path: Path) -> dict[str, Any]:
    """A stage's JSON report, {} when the stage has not written one."""
    return read_json(path) if path.is_file() else {}


def data_counts(project: Project) -> dict[str, Any]:
    """rows read (ingest), quarantined per reason (clean's reasons, label's, split's
    near-duplicates of the test set), unlabeled rows, and the train/val/test sizes: what the
    metrics/ingest, clean, label and split reports hold, gathered where a reader looks."""
    paths = project.params().paths
    ingest, clean = _report(project.path(paths.ingest_report)), _report(project.path(paths.clean_report))
    label, split = _report(project.path(paths.label_report)), _report(project.path(paths.split_report))
    quarantined = {str(k): int(v) for k, v in (clean.get("quarantined_by_reason") or {}).items() if v}
    if label.get("rows_quarantined"):
        quarantined["label"] = int(label["rows_quarantined"])
    near = (split.get("near_duplicates") or {}).get("rows_quarantined_near_duplicate_of_test")
    if near:
        quarantined["near_duplicate_of_test"] = int(near)
    splits = split.get("splits") or {}
    return {"rows_read": ingest.get("rows"), "quarantined": quarantined,
            "unlabeled": ingest.get("rows_unlabeled"),
            "splits": {name: (splits.get(name) or {}).get("rows")
                       for name in ("train", "val", "test") if name in splits}}


def data_line(counts: dict[str, Any]) -> str:
    """'read 308 rows; quarantined 53 (duplicate_text 52, empty_text 1); unlabeled 1;
    train 222, val 19, test 13' (parts whose report is missing are left out)."""
    if not counts or counts.get("rows_read") is None:
        return "unknown (no ingest report)"
    quarantined = counts.get("quarantined") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(quarantined.items()))
    parts = [f"read {counts['rows_read']} rows",
             f"quarantined {sum(quarantined.values())}" + (f" ({reasons})" if reasons else ""),
             f"unlabeled {counts.get('unlabeled') or 0}"]
    if counts.get("splits"):
        parts.append(", ".join(f"{k} {v}" for k, v in counts["splits"].items()))
    return "; ".join(parts)
