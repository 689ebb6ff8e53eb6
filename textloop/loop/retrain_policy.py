"""The retrain policy wired to the loop: inputs gathered from the monitor report (or the
champion's accuracy on new feedback), the loop database, the feedback store and Prefect; the
single-flight lock; the exactly-once feedback export; the decision recorded; then the lifecycle
started (the deployment, or the CLI's in-process starter). Every caller (the monitor flow,
`textloop feedback check`, the dashboard's Retrain) goes through `run_policy`."""

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

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tasks.monitor.retrain_rule import (
    ActiveRuns,
    Decision,
    Exporter,
    PolicyInputs,
    Scorer,
    Starter,
    decide,
)
from textloop.core.backend import team_log_url
from textloop.core.config import Params
from textloop.core.layout import Project
from textloop.loop import db
from textloop.loop.prefect_api import flow_name, recent_runs, single_flight_lock, start_deployment

log = logging.getLogger(__name__)


def export_feedback(engine: Engine, exporter: Exporter) -> tuple[int, str | None]:
    """Copy the pending DB feedback, settled (one label per task and text, the last answer),
    into the DVC store as one new batch, then mark every pending answer exported. Returns the
    labels exported and the batch file."""
    from tasks.feedback import settle

    rows = db.pending_feedback(engine)
    labels = settle(rows)
    if labels.empty:
        if len(rows):  # only purged texts: nothing to learn from, nothing left to export
            db.mark_exported(engine, rows["id"].astype(int).tolist(), "")
        return 0, None
    path = exporter(labels.rename(columns={"source": "annotator"})[
        ["text", "label", "prediction_id", "task", "annotator"]])
    db.mark_exported(engine, rows["id"].astype(int).tolist(), str(path))
    log.info("exported %d labels (%d answers) to %s", len(labels), len(rows), path)
    return len(labels), str(path)


def _row(decision: Decision) -> dict[str, Any]:
    """A decision as a decisions-table row (and journal line)."""
    return {"trigger": decision.trigger, "fired": decision.fire, "reasons": decision.reasons,
            "blocked": decision.blocked, "metrics": decision.inputs,
            "exported_rows": decision.exported_rows, "export_file": decision.export_file,
            "flow_run_id": decision.flow_run_id}


def last_firing(engine: Engine, task: str) -> int:
    """The sequence number of the task's last firing (0: none yet): the firing watermark an
    evaluation reads before it gathers its evidence."""
    query = sa.select(sa.func.max(db.retrain_firings.c.seq)).where(
        db.retrain_firings.c.task == task)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def record(engine: Engine, decision: Decision, task: str = "", seen: int = 0) -> int:
    """Every decision goes to the decisions table (a fired one before its run starts, so the
    cooldown of any later caller already sees it); sets and returns decision.decision_id.

    A fired decision is a compare-and-set on the task's firings: in the same transaction it
    claims firing `seen` + 1 (`seen`: the last firing it saw before gathering). Another
    evaluation that saw the same firing, so the same evidence, and claimed first makes the
    claim collide (unique task, seq): this decision is then recorded not fired, naming it."""
    if decision.fire:
        try:
            with engine.begin() as conn:
                decision.decision_id = _insert_decision(conn, decision)
                conn.execute(db.retrain_firings.insert().values(
                    created_at=db.utcnow(), task=task, seq=seen + 1,
                    decision_id=decision.decision_id, trigger=decision.trigger))
            return decision.decision_id
        except sa.exc.IntegrityError:
            decision.fire = False
            decision.blocked.append(_already_fired(engine, task, seen + 1))
    with engine.begin() as conn:
        decision.decision_id = _insert_decision(conn, decision)
    return decision.decision_id


def _insert_decision(conn: Connection, decision: Decision) -> int:
    """One decisions row, stamped now; its id."""
    result = conn.execute(db.decisions.insert().values(created_at=db.utcnow(), **_row(decision)))
    return int(result.inserted_primary_key[0])


def _already_fired(engine: Engine, task: str, seq: int) -> str:
    """The loser's reason: which decision fired on the same evidence."""
    query = sa.select(db.retrain_firings).where(db.retrain_firings.c.task == task,
                                                db.retrain_firings.c.seq == seq)
    with engine.connect() as conn:
        won = conn.execute(query).mappings().first()
    if won is None:  # the winner's start failed meanwhile and released its firing
        return f"already fired: another evaluation claimed firing {seq} of this task first"
    return (f"already fired by decision {won['decision_id']} ({won['trigger']}, "
            f"{won['created_at']:%Y-%m-%d %H:%M:%S} UTC) on the same evidence")


def release_firing(engine: Engine, decision: Decision) -> None:
    """A fired decision whose export or start failed started nothing: its firing is deleted,
    so the next evaluation on the same evidence may fire."""
    with engine.begin() as conn:
        conn.execute(db.retrain_firings.delete().where(
            db.retrain_firings.c.decision_id == decision.decision_id))


def finish_record(engine: Engine, decision: Decision, journal: Path | None) -> None:
    """After the start: the row gets the run id (or the failed start), then one journal line."""
    if decision.decision_id is None:
        raise ValueError("finish_record needs a recorded decision (call record first)")
    with engine.begin() as conn:
        conn.execute(db.decisions.update().where(db.decisions.c.id == decision.decision_id)
                     .values(fired=decision.fire, blocked=decision.blocked,
                             flow_run_id=decision.flow_run_id,
                             exported_rows=decision.exported_rows,
                             export_file=decision.export_file))
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        line = {"id": decision.decision_id, "at": str(db.utcnow()), **_row(decision)}
        with journal.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, default=str) + "\n")
    log.info("retrain decision %d (%s): fire=%s reasons=%s blocked=%s", decision.decision_id,
             decision.trigger, decision.fire, decision.reasons, decision.blocked)


def _no_store_rows() -> pd.DataFrame:
    """A context without a feedback store (tests): no unconsumed store rows."""
    return pd.DataFrame(columns=["text", "label"])


@dataclass
class PolicyContext:
    """The side effects the policy needs, injectable for tests and for the CLI (whose starter
    runs the lifecycle in-process when no Prefect server is up)."""

    engine: Engine
    params: Params
    starter: Starter
    exporter: Exporter
    active_runs: ActiveRuns
    store_rows: Callable[[], pd.DataFrame] = _no_store_rows   # unconsumed store rows
    scorer: Scorer | None = None   # set: the accuracy input is the champion's on new feedback
    lock: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    journal: Path | None = None
    now: Callable[[], dt.datetime] = db.utcnow
    alert: Callable[[str, dict[str, Any]], Any] | None = None  # alerts.emit for a fired retrain
    task: str | None = None  # the task whose feedback counts (None: every row, tests)


def new_feedback(ctx: PolicyContext) -> pd.DataFrame:
    """The one definition of "new feedback": texts of the context's task with a settled label
    no training run has learned from = the store's batches past the training watermark (origin
    "store") plus the database's answers not yet exported (origin "db"), one row per text, the
    last label winning (tasks.feedback.settle): counts are of texts, not of answers. An exported
    row leaves the DB's pending set as it enters the store, so no row counts twice. Columns:
    text, label, origin."""
    from tasks.feedback import settle

    store = ctx.store_rows()
    pending = db.pending_feedback(ctx.engine)
    if ctx.task is not None:  # the store as ingest reads it; DB rows without a task: this one's
        shared = {ctx.task, *ctx.params.ingest.feedback_tasks}
        store = store[store["task"].fillna("").isin(shared)] if "task" in store else store
        pending = pending[pending["task"].fillna(ctx.task) == ctx.task]
    frames = [f[["text", "label"]].assign(origin=o) for f, o in ((store, "store"), (pending, "db"))
              if len(f)]
    if not frames:
        return pd.DataFrame(columns=["text", "label", "origin"])
    return settle(pd.concat(frames, ignore_index=True)).reset_index(drop=True)


def gather(ctx: PolicyContext, report: Mapping[str, Any] | None) -> PolicyInputs:
    """Read the monitor report (or score the champion on new feedback, when the context has a
    scorer), the DB, the store and the orchestrator into one PolicyInputs."""
    fresh = new_feedback(ctx)
    if ctx.scorer is not None:
        accuracy = ctx.scorer(fresh) if len(fresh) else None
        n_labeled, accuracy_on = len(fresh), "new feedback"
    else:
        acc = (report or {}).get("accuracy", {})
        accuracy, n_labeled, accuracy_on = acc.get("accuracy"), int(acc.get("n_labeled", 0)), "live"
    return PolicyInputs(
        live_accuracy=accuracy, n_labeled=n_labeled,
        alerts=list((report or {}).get("alerts", [])),
        pending_rows=int((fresh["origin"] == "db").sum()),
        unconsumed_rows=int((fresh["origin"] == "store").sum()),
        last_fired_at=db.last_fired_at(ctx.engine), active_runs=ctx.active_runs(),
        now=ctx.now(), accuracy_on=accuracy_on)


def run_policy(ctx: PolicyContext, report: Mapping[str, Any] | None, trigger: str = "monitor",
               overrides: dict[str, Any] | None = None, dry_run: bool = False) -> Decision:
    """firing watermark -> inputs -> decide -> guards -> record -> export -> start, under the
    single-flight lock. Every caller (monitor flow, `feedback check`, the dashboard's Retrain)
    comes through here. A fired decision is recorded with its claim on the task's next firing
    (one compare-and-set: of two evaluations on the same evidence one fires, the other is
    recorded "already fired by decision N", even where no lock spans both, e.g. two checkouts
    sharing one loop database), exports the pending DB feedback once, then the starter runs;
    a failed export or start turns the decision into not fired (recorded with the error) and
    releases its firing. `dry_run`: gather and decide only (no lock, no export, no record, no
    start). `trigger` is one of tasks.monitor.retrain_rule.TRIGGERS."""
    if dry_run:
        return decide(gather(ctx, report), ctx.params, trigger)
    task = ctx.task or ""
    with ctx.lock():
        seen = last_firing(ctx.engine, task)  # read before the evidence: the CAS's expectation
        decision = decide(gather(ctx, report), ctx.params, trigger)
        decision.inputs["after_firing"] = seen
        record(ctx.engine, decision, task, seen)
        claimed = decision.fire
        if decision.fire:
            _export(ctx, decision)
        if decision.fire:
            _start(ctx, decision, {**ctx.params.retrain.overrides, **(overrides or {})})
        if claimed and not decision.fire:
            release_firing(ctx.engine, decision)
        finish_record(ctx.engine, decision, ctx.journal)
    if decision.fire and ctx.alert is not None:
        ctx.alert("retrain_fired", _row(decision))
    return decision


def _export(ctx: PolicyContext, decision: Decision) -> None:
    """Export the pending feedback; a failed export (e.g. the store could not be versioned)
    means no retrain now: the rows stay pending in the DB for the next decision."""
    try:
        decision.exported_rows, decision.export_file = export_feedback(ctx.engine, ctx.exporter)
    except Exception as exc:
        log.exception("could not export the pending feedback")
        decision.fire = False
        decision.blocked.append(f"export failed: {type(exc).__name__}: {exc}")


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
    params = project.params()
    return (params.serve.db_url or team_log_url(params.backend, project.layout.root)
            or db.default_url(project.state))


def policy_context(project: Project, engine: Engine | None = None,
                   starter: Starter | None = None, scorer: Scorer | None = None
                   ) -> PolicyContext:
    """The retrain policy bound to Prefect (runs, lock; by default the start of the lifecycle
    deployment), the loop database and the DVC feedback store of a project. `starter` replaces
    the deployment start (the CLI's in-process run); `scorer` makes the accuracy input the
    champion's accuracy on new feedback (`feedback check`)."""
    from tasks.feedback import unconsumed
    from textloop.core.config import model_name
    from textloop.loop.alerts import emit_for
    from textloop.loop.store import append_versioned

    params = project.params()
    task = model_name(params)  # the task a run of this project trains (its labels count)
    deployment = params.retrain.deployment
    feedback_dir = project.path(params.paths.feedback)
    return PolicyContext(
        engine=engine if engine is not None else db.open_db(policy_db_url(project)),
        params=params,
        starter=starter or (lambda parameters: start_deployment(deployment, parameters,
                                                                ["textloop-retrain"])),
        exporter=lambda rows: append_versioned(
            project, rows.assign(task=rows["task"].fillna(task)), source="serve"),
        active_runs=lambda: [r["id"] for r in recent_runs(flow_name(deployment), 5, True)],
        store_rows=lambda: unconsumed(feedback_dir, project.watermark_path),
        scorer=scorer, lock=lambda: single_flight_lock(project, params.retrain.lock,
                                                       params.retrain.lock_timeout_s),
        journal=project.layout.decisions_journal,
        alert=lambda event, payload: emit_for(project, event, payload), task=task)
