"""A rerun with nothing changed, told apart before the lifecycle flow starts: the always-run
sources check, then DVC's status of every other stage, in one in-process DVC Repo (what
`dvc repro` itself pays). When every stage is up to date and dvc.lock holds the outputs the
last completed run left, the run is a no-op: it is still recorded (`.textloop/last_run.json`, and a
completed `lifecycle` flow run in the Prefect server the run found up), but neither Prefect nor
MLflow is imported, no MLflow run is opened and nothing is registered. Anything else (a stage to
run, params to edit, a crashed holder to recover, the team profile, a failing check) goes to the
flow."""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from textloop.core.config import edits_change_settings
from textloop.core.files import read_json_file
from textloop.core.layout import Project
from textloop.core.lock import LockTimeout, write_json_atomic
from textloop.pipeline.dag import (
    CHECKED,
    SKIPPED,
    checked_plan,
    outputs_digest,
    prepare_workspace,
    record_interpreter,
)
from textloop.pipeline.stage_progress import PROGRESS, captured_output

log = logging.getLogger(__name__)
FLOW_NAME = "lifecycle"  # the flow's name in Prefect (flows.lifecycle)


def _last_completed(project: Project) -> dict[str, Any] | None:
    """The last run's record when it completed with a deploy decision and the digest of the
    outputs it left (dag.outputs_digest), else None."""
    last = read_json_file(project.last_run_path, missing_ok=True)
    if last and last.get("state") == "completed" and last.get("dvc_outputs_sha256") \
            and last.get("deploy"):
        return last
    return None


def _candidate(project: Project, changes: dict[str, Any]) -> dict[str, Any] | None:
    """The last completed run to compare with, when this run could be a no-op: its edits
    leave the params as they are and the project is not in the team profile (whose runs
    pull and push data)."""
    if project.params().backend.profile == "team":
        return None
    if changes and edits_change_settings(project.params_path, changes):
        return None
    return _last_completed(project)


def run_if_unchanged(project: Project, changes: dict[str, Any],
                     prefect_api: str | None) -> dict[str, Any] | None:
    """The run's record when nothing changed since the last completed run (see the module),
    else None: the caller runs the lifecycle flow. Holds the workspace lock meanwhile (a live
    holder or a dead one's record: None, the flow waits or recovers)."""
    last = _candidate(project, changes)
    if last is None:
        return None
    lock = project.workspace_lock(0)
    run_id = str(uuid.uuid4())
    try:
        if lock.acquire(flow_run_id=run_id) is not None:  # a crashed holder: the flow recovers
            return None
    except LockTimeout:
        return None
    try:
        return _decide(project, last, run_id, prefect_api)
    finally:
        lock.release()


def _decide(project: Project, last: dict[str, Any], run_id: str,
            prefect_api: str | None) -> dict[str, Any] | None:
    """Under the workspace lock: the check and DVC's status, then the no-op's record."""
    from dvc.exceptions import DvcException

    started = datetime.now(UTC).isoformat()
    record_interpreter(project)
    prepare_workspace(project)
    seconds: dict[str, float] = {}

    def checked(name: str, secs: float) -> None:  # shown once it is a no-op (else the flow's)
        seconds[name] = secs

    try:
        with captured_output() as out:  # a failing check is reported by the flow's own rerun
            states = checked_plan(project.root, checked)
    except DvcException:
        return None
    if out[-1].strip():  # what the check said (normally nothing), as the flow shows it
        sys.stderr.write(out[-1])
    if any(v not in (CHECKED, SKIPPED) for v in states.values()) \
            or outputs_digest(project.root) != last["dvc_outputs_sha256"]:
        return None
    skipped = [s for s, v in states.items() if v == SKIPPED]
    for name, secs in seconds.items():
        PROGRESS.info("%-10s %-9s %7.1f s", name, CHECKED, secs)
    deploy = _unchanged_deploy(last)
    PROGRESS.info("nothing changed: every stage is up to date (DVC) with the outputs of the "
                  "last run; %s v%s stays, nothing registered", deploy["model_name"],
                  deploy["version"])
    record = {"flow_run_id": run_id, "flow_run_name": f"unchanged-{run_id[:8]}",
              "overrides": {}, "state": "completed", "nothing_changed": True,
              "started_at": started, "pid": os.getpid(), "mlflow_run_id": None,
              "stage_seconds": seconds, "stages_run": [], "stages_skipped": skipped,
              "deploy": deploy, "dvc_outputs_sha256": last["dvc_outputs_sha256"],
              "since_flow_run": _flow_run_of(last),
              "finished_at": datetime.now(UTC).isoformat()}
    record["prefect"] = record_flow_run(prefect_api, record) if prefect_api else (
        "not recorded: no Prefect server was running")
    if not record["prefect"].startswith("flow run "):
        record["flow_run_id"] = "none"  # not in Prefect: status names no flow run
    write_json_atomic(project.last_run_path, record)
    return record


def _flow_run_of(last: dict[str, Any]) -> dict[str, Any]:
    """The Prefect flow run a no-op stands on ({id, name}; {} when none is known): the last
    run's own when Prefect has it, else the one that run stood on, so `status` can still name
    the flow run that produced what is served when no server was up to record the no-op."""
    if last.get("flow_run_id") not in (None, "", "none"):
        return {"id": last["flow_run_id"], "name": last.get("flow_run_name")}
    return dict(last.get("since_flow_run") or {})


def _unchanged_deploy(last: dict[str, Any]) -> dict[str, Any]:
    """The deploy record of a no-op: the version the last run judged, nothing registered."""
    before = last["deploy"]
    version = before.get("candidate_version") or before.get("version")
    reason = f"unchanged, already version {version} (nothing changed since the last run)"
    return {**{k: before.get(k) for k in ("model_name", "version", "candidate_version",
                                          "champion_version", "alias")},
            "registered": False, "promoted": False, "outcome": "unchanged", "reason": reason,
            "summary": {"model": f"{before.get('model_name')} v{before.get('version')}",
                        "deploy": reason, "promoted": "false"}}


def _post(api: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One JSON POST to Prefect's REST API (its public server API); the answer's JSON."""
    req = urllib.request.Request(f"{api.rstrip('/')}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    if key := os.environ.get("PREFECT_API_KEY"):
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def record_flow_run(api: str, record: dict[str, Any]) -> str:
    """The no-op as a completed `lifecycle` flow run in Prefect (it shows in the UI and in
    `textloop status` like any run); `record` takes its id. What was recorded, in words.
    Best effort: a server that does not answer is named, never raised."""
    try:
        flow = _post(api, "/flows/", {"name": FLOW_NAME})
        run = _post(api, "/flow_runs/", {
            "flow_id": flow["id"], "name": record["flow_run_name"],
            "tags": ["nothing-changed"], "parameters": {},
            "state": {"type": "RUNNING", "name": "Running"}})
        _post(api, f"/flow_runs/{run['id']}/set_state", {"state": {
            "type": "COMPLETED", "name": "Completed",
            "message": "nothing changed: every stage up to date, nothing registered"}})
    except (OSError, ValueError, KeyError) as exc:
        log.warning("could not record the run in Prefect at %s: %s", api, exc)
        return f"not recorded: {exc}"
    record["flow_run_id"] = str(run["id"])
    return f"flow run {run['id']}"

