"""The `gc` flow: crashed-run clean-up and storage retention on a schedule
(`gc.interval_minutes`, served by `textloop deploy-flows`); the logic is textloop/loop/gc.py."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from textloop.core.layout import configure, find_project


@flow(name="gc")
def gc_flow(dry_run: bool = False) -> dict[str, Any]:
    """Mark dead runs crashed, purge deleted MLflow runs, garbage-collect the DVC cache."""
    from textloop.loop.gc import collect, reap_crashed

    project = find_project()
    configure(project)
    by = f"gc flow run {flow_run.get_id() or 'none'}"
    reaped = {} if dry_run else reap_crashed(project, by=by)
    report = collect(project, dry_run=dry_run, by=by).to_dict()
    get_run_logger().info("gc%s: %d bytes (%d DVC objects, %d MLflow runs); kept versions %s",
                          " (dry run)" if dry_run else "", report["bytes"],
                          report["dvc_objects"], len(report["mlflow_runs"]),
                          report["protected_versions"])
    return {"reaped": reaped, **report}
