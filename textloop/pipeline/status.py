"""What is deployed and what happened last: the data behind `textloop status`."""

from __future__ import annotations

from typing import Any

from textloop.core.files import read_json_file
from textloop.core.layout import Project
from textloop.pipeline.dag import pipeline_files_problem
from textloop.pipeline.registry import (
    champion_info,
    missing_champion,
    pending_info,
    served_model,
)


def _read(path: Any) -> Any:
    """A JSON state file, or None if missing (a broken one is one error line)."""
    return read_json_file(path, missing_ok=True)


def last_run(project: Project) -> dict[str, Any] | None:
    """The run record; a record still saying `running` whose process no longer holds the
    workspace lock is reported as `crashed` (the next run marks it so in Prefect and MLflow)."""
    record = _read(project.last_run_path)
    if record and record.get("state") == "running" and project.workspace_lock().holder() is None:
        record.update(state="crashed", error="its process died (the workspace lock is free); "
                                             "the next run marks it crashed")
    return record


def labels_per_task(store: Any) -> dict[str, int]:
    """Texts with a settled label in the store, per task ("" for labels stored before labels
    carried a task): what each task's next run learns from."""
    from tasks.feedback import settle

    labels = settle(store)
    if labels.empty:
        return {}
    return {str(k): int(v) for k, v in labels["task"].fillna("").value_counts().sort_index().items()}


def status(project: Project) -> dict[str, Any]:
    """Champion + last run + training budget used + feedback/queue counts + label counts and
    the learning curve (accuracy vs labeled rows across versions)."""
    from tasks.feedback import read_store
    from textloop.pipeline.labelstats import label_counts, learning_curve
    from textloop.pipeline.registry import version_tags

    p = project.params()
    queue = project.path(p.paths.label_queue)
    name, why = served = served_model(project)  # one registry look-up for both entries
    champion = champion_info(project, served)
    return {
        "project": str(project.root),
        "pipeline_files": pipeline_files_problem(project.root),  # e.g. dvc.lock mid-merge
        "model": {"name": name, "why": why},
        "champion": champion,
        # the last champion was deleted from the registry: which, and where rollback goes
        "champion_missing": None if champion else missing_champion(name),
        "pending": pending_info(name),  # deploy.approval: manual; waits for `textloop approve`
        # the last gate decision (metrics/deploy.json): also a refused or unchanged candidate
        "last_deploy": _read(project.path(p.paths.deploy_decision)),
        "last_run": last_run(project),
        "train": _read(project.path(p.paths.train_metrics)),
        "feedback_rows": len(read_store(project.path(p.paths.feedback))),
        "feedback_by_task": labels_per_task(read_store(project.path(p.paths.feedback))),
        "label_queue_rows": max(sum(1 for _ in queue.open(encoding="utf-8")) - 1, 0)
        if queue.is_file() else 0,
        "label_counts": label_counts(project),
        "learning_curve": learning_curve(version_tags(project, name)),
    }
