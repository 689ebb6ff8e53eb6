"""policy: decide whether the loop retrains now, and if so export feedback and start it.

Plain functions with the side effects injected (starter, exporter, lock, active-run lookup), so
the rule is testable without Prefect; flows/policy.py binds them to Prefect and MLflow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from textloop.config import Params
from textloop.serve import db

log = logging.getLogger(__name__)

Starter = Callable[[dict[str, Any]], str]          # lifecycle parameters -> flow run id
Exporter = Callable[[pd.DataFrame], Path]          # feedback rows -> new store batch file
ActiveRuns = Callable[[], list[str]]               # ids of lifecycle runs not finished yet


@dataclass
class PolicyInputs:
    """Everything the rule looks at, gathered before deciding (and logged with the decision)."""

    live_accuracy: float | None
    n_labeled: int
    alerts: list[str]
    pending_rows: int            # feedback in the DB not yet exported to the store
    unconsumed_rows: int         # store rows no training run has ingested yet
    last_fired_at: dt.datetime | None
    active_runs: list[str]
    now: dt.datetime

    @property
    def new_rows(self) -> int:
        """Labeled rows a retrain would learn from that the champion has not seen."""
        return self.pending_rows + self.unconsumed_rows


@dataclass
class Decision:
    """Fire or not, with every reason for (triggers) and against (guards)."""

    fire: bool
    trigger: str
    reasons: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    exported_rows: int = 0
    export_file: str | None = None
    flow_run_id: str | None = None


def triggers(inputs: PolicyInputs, params: Params) -> list[str]:
    """Why a retrain would help: accuracy drop, drift alarms, or plenty of new labels."""
    fb, out = params.feedback, []
    if inputs.live_accuracy is not None and inputs.live_accuracy < fb.min_accuracy:
        out.append(f"live accuracy {inputs.live_accuracy:.3f} < {fb.min_accuracy} "
                   f"on {inputs.n_labeled} labeled predictions")
    if params.retrain.on_drift:
        out.extend(f"drift: {a}" for a in inputs.alerts if not a.startswith("live accuracy"))
    if inputs.new_rows >= fb.min_new_rows:
        out.append(f"{inputs.new_rows} new labeled rows >= {fb.min_new_rows}")
    return out


def guards(inputs: PolicyInputs, params: Params, manual: bool = False) -> list[str]:
    """Why not now: disabled, a run in flight, cooling down, nothing new to learn from."""
    rt, out = params.retrain, []
    if inputs.active_runs:
        out.append(f"single-flight: lifecycle run {inputs.active_runs[0]} is still in flight")
    if manual:
        return out
    if not rt.enabled:
        out.append("retrain.enabled is false")
    if inputs.last_fired_at is not None:
        ready = inputs.last_fired_at + dt.timedelta(minutes=rt.cooldown_minutes)
        if inputs.now < ready:
            out.append(f"cooldown: last retrain {inputs.last_fired_at:%Y-%m-%d %H:%M:%S}, "
                       f"next allowed after {ready:%Y-%m-%d %H:%M:%S} UTC")
    if inputs.new_rows < rt.min_labeled_rows:
        out.append(f"only {inputs.new_rows} new labeled rows < retrain.min_labeled_rows "
                   f"{rt.min_labeled_rows}")
    return out


def decide(inputs: PolicyInputs, params: Params, manual: bool = False) -> Decision:
    """The rule: fire when at least one trigger holds and no guard blocks."""
    reasons = ["requested by a person"] if manual else triggers(inputs, params)
    blocked = guards(inputs, params, manual)
    if not reasons:
        blocked = ["no trigger: accuracy, drift and new-row counts within limits", *blocked]
    data = asdict(inputs)
    data["last_fired_at"] = str(inputs.last_fired_at) if inputs.last_fired_at else None
    data["now"] = str(inputs.now)
    return Decision(fire=bool(reasons) and not blocked, trigger="manual" if manual else "monitor",
                    reasons=reasons, blocked=blocked, inputs=data)


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
