"""What is deployed and what happened last: the data behind `textloop status`."""

from __future__ import annotations

import json
from typing import Any

from textloop.env import Project


def champion_info(project: Project) -> dict[str, Any] | None:
    """The champion version of this project's registered model, with its test metrics."""
    from mlflow import MlflowClient

    from tasks.deploy import model_name
    from textloop import tracking
    from textloop.registry import current_champion

    tracking.setup(project)
    name = model_name(project.params())
    version = current_champion(MlflowClient(), name)
    if version is None:
        return None
    tags = version.tags
    return {
        "model_name": name, "version": str(version.version), "run_id": version.run_id,
        "uri": f"models:/{name}@champion", "source": version.source,
        "metrics": {"accuracy": float(tags.get("test_accuracy", "nan")),
                    "f1_macro": float(tags.get("test_f1_macro", "nan"))},
        "gate": {k.removeprefix("gate."): v for k, v in tags.items() if k.startswith("gate.")},
        "data_hash": tags.get("data_hash"), "model_hash": tags.get("model_hash"),
        "labels": json.loads(tags.get("labels", "[]")), "train_model": tags.get("train_model"),
        "created_at": version.creation_timestamp,
    }


def _read(path: Any) -> Any:
    """A JSON file, or None if missing."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def status(project: Project) -> dict[str, Any]:
    """Champion + last run + training budget used + feedback/queue counts."""
    from tasks.feedback import read_store

    p = project.params()
    queue = project.path(p.paths.label_queue)
    return {
        "project": str(project.root),
        "champion": champion_info(project),
        "last_run": _read(project.last_run_path),
        "train": _read(project.path(p.paths.train_metrics)),
        "feedback_rows": len(read_store(project.path(p.paths.feedback))),
        "label_queue_rows": max(sum(1 for _ in queue.open(encoding="utf-8")) - 1, 0)
        if queue.is_file() else 0,
    }
