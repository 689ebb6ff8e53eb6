"""The retrain policy wired to the loop: inputs gathered from the monitor report, the loop
database and Prefect; the single-flight lock; the exactly-once feedback export; the decision
recorded; the lifecycle deployment started. Every caller (the monitor flow, `textloop feedback
check`, the dashboard's Retrain) goes through `run_policy`."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from tasks.policy import ActiveRuns, Decision, Exporter, PolicyInputs, Starter, decide
from textloop.core.config import Params
from textloop.core.layout import Project
from textloop.loop import db
from textloop.loop.prefect_api import flow_name, recent_runs, single_flight_lock, start_deployment

log = logging.getLogger(__name__)


def export_feedback(engine: Engine, exporter: Exporter) -> tuple[int, str | None]:
    """Copy pending DB feedback into the DVC store as one new batch, then mark it exported."""
    rows = db.pending_feedback(engine)
    if rows.empty:
        return 0, None
    path = exporter(rows[["text", "label", "prediction_id"]])
    marked = db.mark_exported(engine, rows["id"].astype(int).tolist(), str(path))
    log.info("exported %d feedback rows to %s", marked, path)
    return marked, str(path)


def record(engine: Engine, decision: Decision, journal: Path | None) -> int:
    """Every decision goes to the decisions table and, when given, a JSON-lines journal."""
    row = {"trigger": decision.trigger, "fired": decision.fire, "reasons": decision.reasons,
           "blocked": decision.blocked, "metrics": decision.inputs,
           "exported_rows": decision.exported_rows, "export_file": decision.export_file,
           "flow_run_id": decision.flow_run_id}
    decision_id = db.insert_row(engine, db.decisions, row)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        with journal.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": decision_id, "at": str(db.utcnow()), **row}, default=str)
                     + "\n")
    log.info("retrain decision %d: fire=%s reasons=%s blocked=%s", decision_id, decision.fire,
             decision.reasons, decision.blocked)
    return decision_id


@dataclass
class PolicyContext:
    """The side effects the policy needs, injectable for tests."""

    engine: Engine
    params: Params
    starter: Starter
    exporter: Exporter
    active_runs: ActiveRuns
    unconsumed_rows: Callable[[], int] = lambda: 0
    lock: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    journal: Path | None = None
    now: Callable[[], dt.datetime] = db.utcnow


def gather(ctx: PolicyContext, report: Mapping[str, Any] | None) -> PolicyInputs:
    """Read the monitor report, the DB and the orchestrator into one PolicyInputs."""
    acc = (report or {}).get("accuracy", {})
    return PolicyInputs(
        live_accuracy=acc.get("accuracy"), n_labeled=int(acc.get("n_labeled", 0)),
        alerts=list((report or {}).get("alerts", [])),
        pending_rows=db.counts(ctx.engine)["feedback_pending"],
        unconsumed_rows=ctx.unconsumed_rows(), last_fired_at=db.last_fired_at(ctx.engine),
        active_runs=ctx.active_runs(), now=ctx.now())


def run_policy(ctx: PolicyContext, report: Mapping[str, Any] | None,
               manual: bool = False, overrides: dict[str, Any] | None = None) -> Decision:
    """Under the single-flight lock: gather, decide, and when firing export + start + record."""
    with ctx.lock():
        decision = decide(gather(ctx, report), ctx.params, manual)
        if decision.fire:
            decision.exported_rows, decision.export_file = export_feedback(ctx.engine, ctx.exporter)
            _start(ctx, decision, {**ctx.params.retrain.overrides, **(overrides or {})})
        record(ctx.engine, decision, ctx.journal)
    return decision


def _start(ctx: PolicyContext, decision: Decision, overrides: dict[str, Any]) -> None:
    """Start the lifecycle; a failed start is recorded as not fired (the export stays valid)."""
    try:
        decision.flow_run_id = ctx.starter({"overrides": overrides} if overrides else {})
    except Exception as exc:
        log.exception("could not start the lifecycle run")
        decision.fire = False
        decision.blocked.append(f"start failed: {type(exc).__name__}: {exc}")


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


def policy_db_url(project: Project) -> str:
    """The loop database of a project (the one `textloop serve` writes)."""
    return project.params().serve.db_url or db.default_url(project.state)


def unconsumed_store_rows(feedback_dir: Path, watermark: Path) -> int:
    """Rows in the feedback store that no training run has ingested (the lifecycle's watermark)."""
    from tasks.feedback import unconsumed

    return len(unconsumed(feedback_dir, watermark))


def policy_context(project: Project, engine: Engine | None = None) -> PolicyContext:
    """The retrain policy bound to Prefect (start, runs, lock), the loop database and the DVC
    feedback store of a project."""
    from tasks.feedback import append_batch

    params = project.params()
    deployment = params.retrain.deployment
    feedback_dir = project.path(params.paths.feedback)
    return PolicyContext(
        engine=engine if engine is not None else db.open_db(policy_db_url(project)),
        params=params,
        starter=lambda parameters: start_deployment(deployment, parameters, ["textloop-retrain"]),
        exporter=lambda rows: append_batch(feedback_dir, rows, source="serve"),
        active_runs=lambda: [r["id"] for r in recent_runs(flow_name(deployment), 5, True)],
        unconsumed_rows=lambda: unconsumed_store_rows(feedback_dir, project.watermark_path),
        lock=lambda: single_flight_lock(project, params.retrain.lock,
                                        params.retrain.lock_timeout_s),
        journal=project.state.resolve() / "monitor" / "decisions.jsonl")
