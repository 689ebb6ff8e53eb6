"""The retrain policy as a Prefect task: single-flight lock, feedback export, lifecycle start.

The rule lives in tasks/policy.py, its wiring in textloop/loop/policy.py; this task only runs it
inside the monitor flow and logs the decision to the monitor's MLflow run."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from textloop.core.layout import Project


@task(task_run_name="retrain-policy", cache_policy=NO_CACHE)
def retrain_policy(root: str, report: Mapping[str, Any] | None,
                   mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Decide on a monitor report; when it fires, export feedback and start the lifecycle."""
    from textloop.loop.policy import log_decision, policy_context, run_policy

    ctx = policy_context(Project(Path(root)))
    decision = dataclasses.asdict(run_policy(ctx, report, trigger="monitor"))
    log_decision(mlflow_run_id, decision)
    logger = get_run_logger()
    logger.info("retrain %s: %s", "FIRED" if decision["fire"] else "not fired",
                "; ".join(decision["reasons"] + decision["blocked"]))
    return decision
