"""The retrain policy as a Prefect task: single-flight lock, feedback export, lifecycle start.

The rule itself lives in tasks/policy.py (plain functions); this module binds it to the
project's database, the Prefect API and MLflow, and logs every decision."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from textloop.env import Project


def policy_db_url(project: Project) -> str:
    """The loop database of a project (the one `textloop serve` writes)."""
    from textloop.serve.db import default_url

    return project.params().serve.db_url or default_url(project.state)


def log_decision(run_id: str | None, decision: dict[str, Any]) -> None:
    """Attach the decision to the monitor's MLflow run (tags + decision.json)."""
    if run_id is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, "retrain.fired", str(decision["fire"]).lower())
    client.set_tag(run_id, "retrain.reasons", "; ".join(decision["reasons"])[:5000])
    client.set_tag(run_id, "retrain.blocked", "; ".join(decision["blocked"])[:5000])
    if decision.get("flow_run_id"):
        client.set_tag(run_id, "retrain.flow_run_id", decision["flow_run_id"])
    client.log_dict(run_id, decision, "decision.json")


@task(task_run_name="retrain-policy", cache_policy=NO_CACHE)
def retrain_policy(root: str, report: Mapping[str, Any] | None,
                   mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Decide on a monitor report; when it fires, export feedback and start the lifecycle."""
    from tasks.policy import run_policy
    from textloop.serve import db, orchestration

    project = Project(Path(root))
    params = project.params()
    engine = db.open_db(policy_db_url(project))
    ctx = orchestration.policy_context(engine, params, project.root, project.state.resolve())
    decision = dataclasses.asdict(run_policy(ctx, report))
    log_decision(mlflow_run_id, decision)
    logger = get_run_logger()
    logger.info("retrain %s: %s", "FIRED" if decision["fire"] else "not fired",
                "; ".join(decision["reasons"] + decision["blocked"]))
    return decision
