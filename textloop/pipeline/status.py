"""What is deployed and what happened last: the data behind `textloop status`."""

from __future__ import annotations

import json
from typing import Any

from textloop.core.layout import Project
from textloop.pipeline.registry import champion_info, served_model


def _read(path: Any) -> Any:
    """A JSON file, or None if missing."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def status(project: Project) -> dict[str, Any]:
    """Champion + last run + training budget used + feedback/queue counts."""
    from tasks.feedback import read_store

    p = project.params()
    queue = project.path(p.paths.label_queue)
    name, why = served_model(project)
    return {
        "project": str(project.root),
        "model": {"name": name, "why": why},
        "champion": champion_info(project),
        # the last gate decision (metrics/deploy.json): also a refused or unchanged candidate
        "last_deploy": _read(project.path(p.paths.deploy_decision)),
        "last_run": _read(project.last_run_path),
        "train": _read(project.path(p.paths.train_metrics)),
        "feedback_rows": len(read_store(project.path(p.paths.feedback))),
        "label_queue_rows": max(sum(1 for _ in queue.open(encoding="utf-8")) - 1, 0)
        if queue.is_file() else 0,
    }
