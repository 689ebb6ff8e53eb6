"""The in-process retrain starter for projects without a Prefect server (no `textloop up`).

The retrain policy (textloop/loop/retrain_policy.py) calls its starter under the single-flight lock,
after the decision was recorded. Running a whole lifecycle there would hold the lock for
minutes, so this starter only creates the `lifecycle` flow run (PENDING: the single-flight guard
of any other caller sees it at once); the CLI then runs that very flow run in this process once
the policy returned. It lives in the CLI layer because the loop layer may not import flows/.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class InProcessLifecycle:
    """A policy Starter: `__call__(parameters) -> flow run id` creates the run, `run()` runs it."""

    def __init__(self) -> None:
        self.pending: tuple[Any, dict[str, Any]] | None = None

    def __call__(self, parameters: dict[str, Any]) -> str:
        """Create a PENDING `lifecycle` flow run with these parameters; returns its id."""
        from prefect import get_client

        from flows.lifecycle import lifecycle

        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run(lifecycle, parameters=parameters,
                                              tags=["textloop-retrain", "in-process"])
        self.pending = (flow_run, parameters)
        log.info("created lifecycle run %s (runs in this process)", flow_run.id)
        return str(flow_run.id)

    def run(self) -> dict[str, Any] | None:
        """Run the created flow run here, to the end; None when the policy did not start one.

        Raises flows.lifecycle.StageFailed when a stage fails (the run is then Failed in
        Prefect)."""
        if self.pending is None:
            return None
        from prefect.flow_engine import run_flow

        from flows.lifecycle import lifecycle

        flow_run, parameters = self.pending
        self.pending = None
        return run_flow(lifecycle, flow_run=flow_run, parameters=parameters)  # type: ignore[return-value]
