"""The /label page's service: answers stored in the loop database, undo, progress, agreement.

An answer is one row of `label_answers` (annotator, time, item id and origin, text hash, label).
When an item has the answers it needs (two for a double-annotated item, tasks/label/annotate.py) and
they agree, ONE feedback row is written to the `feedback` table, the same table `/feedback`
writes; from there the retrain policy's export (textloop/loop/policy.export_feedback ->
textloop/loop/store.append_versioned) versions it in the DVC feedback store and the same retrain
rule counts it. Disagreements stay out of training, in the review list."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tasks.label.annotate import agreement, answers_needed, outcome
from textloop.loop import db

log = logging.getLogger(__name__)
ANSWERS = db.label_answers


class LabelConflict(Exception):
    """The answer or undo cannot be applied (already answered, settled, or exported)."""


def _item_answers(conn: Connection, item_id: str) -> list[dict[str, Any]]:
    """The answers to one item, oldest first."""
    query = sa.select(ANSWERS).where(ANSWERS.c.item_id == item_id).order_by(ANSWERS.c.id)
    return [dict(r) for r in conn.execute(query).mappings().all()]


def answer(engine: Engine, item: Mapping[str, str], annotator: str, label: str,
           double_fraction: float) -> dict[str, Any]:
    """Store one annotator's label for a queue item (item_id, origin, text, text_hash,
    prediction_id). Returns {item_id, status, feedback_id}: status waiting (a second annotator
    is due), agreed (a feedback row was written) or disagreement (sent to review). Raises
    LabelConflict, naming what was there first, when this annotator already answered the item,
    the item is settled or has all its answers, or a concurrent answer took the same slot (the
    unique (item_id, slot) index: two answers can never both settle one item)."""
    item_id = item["item_id"]
    needed = answers_needed(item_id, double_fraction)
    try:
        with engine.begin() as conn:
            before = _item_answers(conn, item_id)
            _may_answer(before, item_id, annotator, needed)
            conn.execute(ANSWERS.insert().values(
                created_at=db.utcnow(), annotator=annotator, item_id=item_id,
                origin=item["origin"], text_hash=item["text_hash"], label=label,
                status="waiting", slot=len(before)))
            state = outcome([a["label"] for a in before] + [label], needed)
            feedback_id = _settle(conn, item, label, state)
    except sa.exc.IntegrityError:  # a concurrent answer won the slot: name it
        with engine.connect() as conn:
            raise LabelConflict(_taken(_item_answers(conn, item_id), item_id)) from None
    log.info("label: %s answered %s (%s) -> %s", annotator, item_id, label, state)
    return {"item_id": item_id, "status": state, "feedback_id": feedback_id}


def _may_answer(before: list[dict[str, Any]], item_id: str, annotator: str,
                needed: int) -> None:
    """The rule an answer must pass (LabelConflict naming what is there otherwise)."""
    if any(a["annotator"] == annotator for a in before):
        raise LabelConflict(f"{annotator} already answered {item_id}")
    if any(a["status"] != "waiting" for a in before) or len(before) >= needed:
        raise LabelConflict(_taken(before, item_id))


def _taken(answers: list[dict[str, Any]], item_id: str) -> str:
    """One line naming the answers an item already has (who, which label, its state)."""
    said = ", ".join(f"{a['label']!r} by {a['annotator']}" for a in answers) or "none"
    state = answers[-1]["status"] if answers else "waiting"
    return f"{item_id} is already settled ({state}: {said})" if state != "waiting" else (
        f"{item_id} already has its answers ({said})")


def _settle(conn: Connection, item: Mapping[str, str], label: str, state: str) -> int | None:
    """An agreed item becomes one feedback row (source `label`); its answers get the state."""
    if state == "waiting":
        return None
    feedback_id = None
    if state == "agreed":
        row = {"created_at": db.utcnow(), "prediction_id": item.get("prediction_id") or None,
               "text": item["text"], "label": label, "source": "label",
               "task": item.get("task")}
        feedback_id = conn.execute(db.feedback.insert().returning(db.feedback.c.id), [row]).scalar()
    conn.execute(ANSWERS.update().where(ANSWERS.c.item_id == item["item_id"])
                 .values(status=state, feedback_id=feedback_id))
    return feedback_id


def undo_last(engine: Engine, annotator: str) -> dict[str, Any] | None:
    """Take back the annotator's newest answer (and the feedback row it completed, while that
    row is not yet exported); the item's other answers wait again. Returns the removed answer
    (item_id, label) or None when there is none. Raises LabelConflict when its feedback row
    was already exported to the DVC store (the store is append-only)."""
    with engine.begin() as conn:
        last = conn.execute(sa.select(ANSWERS).where(ANSWERS.c.annotator == annotator)
                            .order_by(ANSWERS.c.id.desc()).limit(1)).mappings().first()
        if last is None:
            return None
        if last["feedback_id"] is not None:
            exported = conn.execute(sa.select(db.feedback.c.exported_at).where(
                db.feedback.c.id == last["feedback_id"])).scalar()
            if exported is not None:
                raise LabelConflict(f"{last['item_id']} was already exported to the store")
            conn.execute(db.feedback.delete().where(db.feedback.c.id == last["feedback_id"]))
        conn.execute(ANSWERS.delete().where(ANSWERS.c.id == last["id"]))
        _renumber(conn, last["item_id"])
    log.info("label: %s undid %s", annotator, last["item_id"])
    return {"item_id": last["item_id"], "label": last["label"]}


def _renumber(conn: Connection, item_id: str) -> None:
    """After an undo the item's remaining answers wait again, in slots 0.. in answer order."""
    for slot, row in enumerate(_item_answers(conn, item_id)):
        conn.execute(ANSWERS.update().where(ANSWERS.c.id == row["id"])
                     .values(status="waiting", feedback_id=None, slot=slot))


def read_answers(engine: Engine) -> pd.DataFrame:
    """Every answer, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ANSWERS).order_by(ANSWERS.c.id)).mappings().all()
    return pd.DataFrame(rows, columns=[c.name for c in ANSWERS.columns])


def next_item(queue: pd.DataFrame, answers: pd.DataFrame, annotator: str,
              double_fraction: float, skip: set[str]) -> dict[str, Any] | None:
    """The first queue item (rank order) this annotator has not answered or skipped, that is
    not settled and still needs an answer; None when none is left."""
    groups = dict(tuple(answers.groupby("item_id"))) if len(answers) else {}
    for row in queue.to_dict("records"):
        item_id = row["item_id"]
        got = groups.get(item_id)
        if item_id in skip or (got is not None and (
                annotator in set(got["annotator"]) or (got["status"] != "waiting").any()
                or len(got) >= answers_needed(item_id, double_fraction))):
            continue
        return row
    return None


def progress(queue: pd.DataFrame, answers: pd.DataFrame, annotator: str | None) -> dict[str, Any]:
    """Items in the queue and how many are settled; answers per annotator (and this one's);
    items in review (disagreements); agreement (Cohen's kappa) over double-annotated items."""
    in_queue = answers[answers["item_id"].isin(set(queue["item_id"]))]
    settled = in_queue[in_queue["status"] != "waiting"]["item_id"].nunique()
    per = {str(k): int(v) for k, v in answers["annotator"].value_counts().sort_index().items()}
    return {"items": len(queue), "settled": int(settled),
            "mine": per.get(annotator or "", 0), "by_annotator": per,
            "review": int(answers[answers["status"] == "disagreement"]["item_id"].nunique()),
            "agreement": agreement(answer_pairs(answers))}


def answer_pairs(answers: pd.DataFrame) -> pd.DataFrame:
    """First and second label of each item with two answers (columns first, second)."""
    two = answers[answers.groupby("item_id")["id"].transform("size") == 2].sort_values("id")
    if two.empty:
        return pd.DataFrame(columns=["item_id", "first", "second"])
    grouped = two.groupby("item_id")["label"]
    return pd.DataFrame({"first": grouped.first(), "second": grouped.last()}).reset_index()


def review_list(answers: pd.DataFrame, queue: pd.DataFrame) -> list[dict[str, Any]]:
    """Items the annotators disagreed on: each one's labels by annotator and its text."""
    bad = answers[answers["status"] == "disagreement"]
    texts = dict(zip(queue["item_id"], queue["text"]))
    return [{"item_id": item_id, "text": texts.get(item_id, ""), "origin": g["origin"].iloc[0],
             "labels": dict(zip(g["annotator"], g["label"]))}
            for item_id, g in bad.groupby("item_id", sort=False)]


def export(project: Any, engine: Engine | None = None) -> dict[str, Any]:
    """Export the pending feedback (agreed answers included) to the DVC-versioned store now,
    through the retrain policy's own export (the same exporter, marking rows exported once).
    Returns {rows, file}."""
    from textloop.loop.retrain_policy import export_feedback, policy_context

    ctx = policy_context(project, engine)
    rows, path = export_feedback(ctx.engine, ctx.exporter)
    return {"rows": rows, "file": path}
