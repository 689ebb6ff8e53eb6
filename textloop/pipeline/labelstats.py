"""Label counts and the learning curve, for `textloop status` and the dashboard.

Counts come from the label stage's report (metrics/label.json) and the active queue; the
report's weak / pseudo / suspected-error entries are written by the label-quality steps and read
here defensively (a missing entry is None, not an error), so status works on any report
version. The learning curve is test accuracy against labeled training rows across registered
versions (their `train_rows` and `test_accuracy` tags)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from textloop.core.layout import Project

# where each count may sit in metrics/label.json (first found wins)
_KEYS: dict[str, Sequence[tuple[str, ...]]] = {
    "labeled": [("rows_trusted",), ("rows_labeled",)],
    "weak": [("rows_weak",), ("weak_rows",), ("weak", "rows"), ("rows_by_origin", "weak"),
             ("origins", "weak"), ("weak",)],
    "pseudo": [("rows_pseudo",), ("pseudo_rows",), ("pseudo", "rows"),
               ("rows_by_origin", "pseudo"), ("origins", "pseudo"), ("pseudo",)],
    "queued": [("rows_queued",)],
    "suspected_error": [("rows_suspected",), ("suspected_label_errors",),
                        ("label_issues", "issues"), ("issues", "issues"), ("issues", "count"),
                        ("queued_by_reason", "suspected_label_error"), ("issues",)],
}


def _count(report: Mapping[str, Any], path: tuple[str, ...]) -> int | None:
    """The integer at `path` (a dict there counts by its rows/count/issues entry), else None."""
    node: Any = report
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, Mapping):
        node = next((node[k] for k in ("rows", "count", "issues") if k in node), None)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return int(node)


def counts_from_report(report: Mapping[str, Any] | None, active_queue: int | None
                       ) -> dict[str, int | None]:
    """labeled / weak / pseudo / queued / suspected_error rows from a label report (None when
    the report lacks the entry), plus the active queue's length."""
    report = report or {}
    out = {name: next((c for p in paths if (c := _count(report, p)) is not None), None)
           for name, paths in _KEYS.items()}
    return {**out, "active_queue": active_queue}


def label_counts(project: Project) -> dict[str, int | None]:
    """The counts of a project (its label report and active queue)."""
    p = project.params().paths
    return counts_from_files(project.path(p.label_report), project.path(p.active_queue))


def counts_from_files(report_path: Path, queue: Path) -> dict[str, int | None]:
    """counts_from_report of a label report file and an active queue file (either missing)."""
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
    rows = max(sum(1 for _ in queue.open("rb")) - 1, 0) if queue.is_file() else None
    return counts_from_report(report, rows)


def learning_curve(versions: Iterable[tuple[str, Mapping[str, str]]]) -> list[dict[str, Any]]:
    """(version, tags) pairs -> points {version, labeled_rows, accuracy} for versions that carry
    both tags, ordered by labeled rows then version."""
    points = []
    for version, tags in versions:
        try:
            rows, acc = int(tags["train_rows"]), float(tags["test_accuracy"])
        except (KeyError, ValueError):
            continue
        points.append({"version": str(version), "labeled_rows": rows, "accuracy": acc})
    return sorted(points, key=lambda p: (p["labeled_rows"], int(p["version"])
                                         if p["version"].isdigit() else 0))
