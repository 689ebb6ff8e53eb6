"""`textloop feedback add/check` and `label import`: store corrections; `check` asks the retrain
policy (textloop/loop/retrain_policy.py), the same one the monitor and the dashboard use."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.monitor.retrain_rule import Starter
from textloop.core.errors import UserError
from textloop.core.layout import Project

log = logging.getLogger(__name__)


def known_labels(project: Project) -> list[str] | None:
    """The label set corrections must come from: the champion's, else the last labeled data's."""
    from textloop.pipeline.registry import champion_info

    champ = champion_info(project)
    if champ is not None:
        return champ["labels"]
    report = project.path(project.params().paths.label_report)
    if report.is_file():
        return sorted(json.loads(report.read_text(encoding="utf-8")).get("labels", {})) or None
    return None


def task_of(project: Project) -> str:
    """The task a project's labels belong to: the registered model its runs train (the one
    rule, textloop.core.config.model_name)."""
    from textloop.core.config import model_name

    return model_name(project.params())


def add_rows(project: Project, df: Any, origin: Path, source: str) -> dict[str, Any]:
    """Validate labels (named by file, row, column on error) and append them to the store as
    one batch of label events of the project's task.

    One text labelled two ways by one annotator (or source) in the batch: UserError naming the
    rows. Different annotators disagreeing: those texts go to review (the /label review list),
    not to the store. Events the store already holds as their latest label are left out; when
    nothing new is left the import is a no-op that says so."""
    from tasks.feedback import (
        already_stored,
        label_events,
        read_store,
        refuse_contradictions,
        split_disagreements,
        validate_rows,
    )
    from textloop.loop.store import append_versioned

    rows = validate_rows(df, origin, known_labels(project))
    rows["task"] = task_of(project)
    if "annotator" in df.columns:
        rows["annotator"] = df["annotator"]
    events = label_events(rows, source)
    refuse_contradictions(events, origin)
    events = events[~events.duplicated(["task", "text_hash", "annotator", "label"])]
    agreed, review = split_disagreements(events)
    store = read_store(project.path(project.params().paths.feedback))
    fresh = agreed[~already_stored(store, agreed)]
    out: dict[str, Any] = {"rows": len(fresh), "source": source, "task": task_of(project),
                           "already_stored": len(agreed) - len(fresh),
                           "review": int(review["text_hash"].nunique())}
    if len(review):
        send_to_review(project, review)
    if fresh.empty:
        out.update(batch=None, batch_id=None, already_imported=True,
                   note="already imported: the store holds every label of this file; nothing added")
        log.info("%s: already imported, nothing added", origin)
        return out
    batch = append_versioned(project, fresh, source)
    out.update(batch=str(batch), batch_id=str(pd.read_parquet(batch)["batch_id"].iloc[0]),
               already_imported=False)
    return out


def send_to_review(project: Project, review: pd.DataFrame) -> int:
    """Texts annotators disagree on in an import become review items (`import:<hash>`, one
    answer per annotator, status disagreement): kept out of training, listed by /label's review.
    An answer already recorded is not recorded twice. Returns the answers added."""
    import sqlalchemy as sa

    from textloop.loop import db
    from textloop.loop.retrain_policy import policy_db_url

    engine = db.open_db(policy_db_url(project))
    answers, added = db.label_answers, 0
    with engine.begin() as conn:
        for row in review.itertuples(index=False):
            item_id = f"import:{row.text_hash[:32]}"
            exists = conn.execute(sa.select(answers.c.id).where(
                answers.c.item_id == item_id, answers.c.annotator == row.annotator)).first()
            if exists is None:
                conn.execute(answers.insert().values(
                    created_at=db.utcnow(), annotator=row.annotator, item_id=item_id,
                    origin="import", text_hash=row.text_hash, label=row.label,
                    status="disagreement"))
                added += 1
    log.info("label import: %d text(s) annotators disagree on sent to review",
             review["text_hash"].nunique())
    return added


def adopt(project: Project, task: str | None = None) -> dict[str, Any]:
    """`textloop label adopt`: labels stored before labels carried a task join `task` (default:
    the task this project trains), as a new DVC version of the store."""
    from textloop.core.config import model_name
    from textloop.loop.store import adopt_untagged

    if task is not None and not task.strip():
        raise UserError("label adopt --task: give a task name (a registered model), not empty")
    return adopt_untagged(project, task or model_name(project.params()))


def retract(project: Project, batch_id: str) -> dict[str, Any]:
    """`textloop label retract BATCH`: the batch leaves the store, as a new DVC version."""
    from textloop.loop.store import retract_batch

    return retract_batch(project, batch_id)


def add(project: Project, path: Path, source: str) -> dict[str, Any]:
    """Read a corrections file and append it."""
    from textloop.core.tables import read_table

    df, _ = read_table(path)
    return add_rows(project, df, path, source)


def champion_scorer(project: Project) -> Callable[[pd.DataFrame], float]:
    """Rows (text, label) -> the champion's accuracy on them (0..1); the model is loaded when
    first called. Raises UserError when there is no champion yet."""

    def accuracy(rows: pd.DataFrame) -> float:
        from tasks.evaluate.metrics import score
        from textloop.pipeline.registry import load_champion

        model, _ = load_champion(project)
        pred = model.predict_frame(rows["text"].astype(str).tolist())["label"].tolist()
        return score(rows["label"].astype(str).tolist(), pred)["accuracy"]

    return accuracy


def check(project: Project, dry_run: bool = False, starter: Starter | None = None
          ) -> dict[str, Any]:
    """`feedback check`: the retrain policy with trigger "feedback", its accuracy input the
    champion's accuracy on new feedback (store rows past the watermark + DB rows not exported;
    one definition: textloop.loop.retrain_policy.new_feedback). Same cooldown, single-flight and
    decisions table as the monitor. `starter` replaces the deployment start (the CLI passes an
    in-process one when no Prefect server is up); `dry_run` decides only (nothing recorded,
    exported or started). Returns the decision as a JSON-ready summary."""
    from textloop.loop.retrain_policy import policy_context, run_policy

    ctx = policy_context(project, starter=starter, scorer=champion_scorer(project))
    decision = run_policy(ctx, None, trigger="feedback", dry_run=dry_run)
    inputs = decision.inputs
    return {"retrain": decision.fire, "dry_run": dry_run, "trigger": decision.trigger,
            "new_rows": inputs["pending_rows"] + inputs["unconsumed_rows"],
            "pending_db_rows": inputs["pending_rows"],
            "unconsumed_store_rows": inputs["unconsumed_rows"],
            "accuracy": inputs["live_accuracy"], "reasons": decision.reasons,
            "blocked": decision.blocked, "decision_id": decision.decision_id,
            "exported_rows": decision.exported_rows, "flow_run_id": decision.flow_run_id}
