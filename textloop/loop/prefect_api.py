"""The few Prefect API calls the loop makes: start the lifecycle deployment, list its runs."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)
ACTIVE_STATES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


def api_configured() -> bool:
    """True when a Prefect server is configured (never spin up an ephemeral one from the API)."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def flow_name(deployment: str) -> str:
    """'lifecycle/lifecycle' -> 'lifecycle'."""
    return deployment.split("/", 1)[0]


def start_deployment(deployment: str, parameters: dict[str, Any], tags: list[str]) -> str:
    """Create a run of a deployment and return its id at once (the runner executes it)."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=parameters, timeout=0, tags=tags,
                         as_subflow=False)
    log.info("started %s run %s", deployment, run.id)
    return str(run.id)


def _run_dict(run: Any) -> dict[str, Any]:
    """The fields of a flow run the dashboard and the policy need."""
    state = run.state
    return {
        "id": str(run.id), "name": run.name,
        "state": state.name if state else "?", "state_type": state.type.value if state else "?",
        "start_time": run.start_time.isoformat(timespec="seconds") if run.start_time else None,
        "expected_start_time": (run.expected_start_time.isoformat(timespec="seconds")
                                if run.expected_start_time else None),
        "end_time": run.end_time.isoformat(timespec="seconds") if run.end_time else None,
        "parameters": run.parameters, "tags": list(run.tags or []),
    }


def recent_runs(flow: str, limit: int = 10, active_only: bool = False) -> list[dict[str, Any]]:
    """Newest runs of a flow that are due (future cron runs excluded), optionally unfinished only."""
    import datetime as dt

    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    due = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    criteria: dict[str, Any] = {"expected_start_time": FlowRunFilterExpectedStartTime(before_=due)}
    if active_only:
        types = FlowRunFilterStateType(any_=[StateType(s) for s in ACTIVE_STATES])
        criteria["state"] = FlowRunFilterState(type=types)
    run_filter = FlowRunFilter(**criteria)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                                     flow_run_filter=run_filter, limit=limit,
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC)
    return [_run_dict(r) for r in runs]


def read_run(run_id: str) -> dict[str, Any]:
    """One flow run's current state."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return _run_dict(client.read_flow_run(UUID(run_id)))


def ensure_lock(name: str, slots: int = 1) -> None:
    """Create (or resize) the global concurrency limit behind single-flight retraining."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)


def single_flight_lock(name: str) -> Any:
    """A context manager holding the policy's one global concurrency slot."""
    from prefect.concurrency.sync import concurrency

    ensure_lock(name)
    return concurrency(name, occupy=1, timeout_seconds=120, strict=True)
