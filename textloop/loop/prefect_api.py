"""The few Prefect API calls the loop makes: start the lifecycle deployment, list its runs,
mark a dead run Crashed; and the retrain single-flight lock."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from uuid import UUID

from textloop.core.layout import Project
from textloop.core.lock import HolderLock

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


def single_flight_lock(project: Project, name: str, timeout_s: float) -> HolderLock:
    """The policy's single-flight lock: the same crash-safe OS lock as the workspace (a killed
    worker or `textloop serve` frees it at once), on the team profile also held across machines
    (a PostgreSQL advisory lock); a live holder is waited for timeout_s seconds, then
    LockTimeout names it."""
    from textloop.core.backend import shared_lock

    shared = shared_lock(project.params().backend, project.layout.root, f"retrain:{name}")
    return HolderLock(project.lock_path(name), f"retrain lock {name!r}", timeout_s,
                      shared=shared)


def mark_crashed(flow_run_id: str, message: str) -> bool:
    """Set a dead holder's flow run to Crashed unless it already ended. Best effort: returns
    False when the id is not a run id or the API is unreachable (logged, never raised)."""
    import httpx
    from prefect import get_client
    from prefect.exceptions import PrefectException
    from prefect.states import Crashed

    try:
        run_id = UUID(flow_run_id)
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return False
            result = client.set_flow_run_state(run_id, Crashed(message=message), force=True)
    except (ValueError, OSError, httpx.HTTPError, PrefectException) as exc:
        log.warning("could not mark flow run %s Crashed: %s: %s", flow_run_id,
                    type(exc).__name__, exc)
        return False
    log.info("flow run %s marked Crashed: %s", flow_run_id, result.status.value)
    return result.status.value == "ACCEPT"


# ---- the team profile: a process work pool, deployments that run in each worker's checkout ---

# The flow run's working directory: the checkout of the worker that picked it up (`textloop
# worker` exports TEXTLOOP_PROJECT; the flow-run process inherits it), never the submitter's path.
WORKDIR_STEP = {"prefect.deployments.steps.set_working_directory":
                {"directory": "{{ $TEXTLOOP_PROJECT }}"}}


class WorkerCheckout:
    """Prefect runner storage meaning "the code is already in every worker's checkout": nothing
    is pulled; the one pull step moves the run into the worker's project folder."""

    def set_base_path(self, path: Path) -> None:
        """Nothing to place: the worker's checkout is the code."""

    @property
    def pull_interval(self) -> int | None:
        """Never pulled in the background."""
        return None

    @property
    def destination(self) -> Path:
        """The checkout of the process that reads it."""
        return Path(os.environ.get("TEXTLOOP_PROJECT", "."))

    async def pull_code(self) -> None:
        """Nothing to download."""

    def to_pull_step(self) -> dict[str, Any]:
        """set_working_directory to the worker's $TEXTLOOP_PROJECT."""
        return dict(WORKDIR_STEP)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkerCheckout)

    __hash__ = object.__hash__


def ensure_work_pool(name: str) -> bool:
    """Create the process-type work pool `name` (Prefect's default process job template) when
    missing. Returns True when it was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        template = ProcessWorker.get_default_base_job_template()
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process",
                                                   base_job_template=template))
        except ObjectAlreadyExists:  # another worker created it meanwhile
            return False
    log.info("created the process work pool %r", name)
    return True


def apply_to_pool(deployments: list[Any], pool: str) -> list[str]:
    """Register RunnerDeployments on the work pool, each run in the executing worker's
    checkout (WorkerCheckout); idempotent (every worker may do it). Returns their ids."""
    ids = []
    for dep in deployments:
        dep.storage = WorkerCheckout()
        ids.append(str(dep.apply(work_pool_name=pool)))
    return ids

