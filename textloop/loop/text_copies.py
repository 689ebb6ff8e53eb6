"""Every place the loop keeps a served or labeled text, in one registry: `textloop forget` and the
retention purge both walk it, so a place added here is reached by both, and a place that keeps
texts without being listed here fails the erasure test (tests/e2e/test_erasure_reach.py).

Each place says how to erase a set of texts from it (by hash: every form a text may be stored
under, see `hash_forms`) and what the retention purge does there (served texts older than the
cutoff). Data the pipeline derives from the sources (raw snapshot, clean, labeled, shards) is
rebuilt without erased texts by the next run (ingest applies the tombstones), and trained models
are named in the erasure record; those are not copies this registry rewrites."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from textloop.core.layout import Project
from textloop.core.text import text_hash
from textloop.loop import db

log = logging.getLogger(__name__)


@dataclass
class Erasure:
    """What to erase: every hash form of the texts, the texts themselves when known."""

    hashes: set[str]
    texts: set[str]
    prediction_ids: set[str] = field(default_factory=set)  # filled by the prediction log


@dataclass
class Purge:
    """What the retention purge blanks: predictions created before `cutoff`."""

    cutoff: dt.datetime
    prediction_ids: set[str] = field(default_factory=set)  # filled by the prediction log


@dataclass(frozen=True)
class Place:
    """One place a text can live: its name, what it is, and how forget and purge reach it."""

    name: str
    what: str
    forget: Callable[[Project, Engine, Erasure], int]
    purge: Callable[[Project, Engine, Purge], int]


def hash_forms(text: str) -> set[str]:
    """The hashes a text may be stored under: the normalised-text hash (prediction log, store,
    tombstones) and the sha256 of the text as written (active queue items)."""
    return {text_hash(text), hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _matches(texts: pd.Series, what: Erasure) -> pd.Series:
    """Rows whose text is one of the erased texts, in any of its hash forms."""
    if texts.empty:
        return pd.Series(False, index=texts.index)
    return texts.astype(str).map(lambda t: bool(hash_forms(t) & what.hashes) or t in what.texts)


# --- the loop database -------------------------------------------------------------------


def _forget_predictions(_p: Project, engine: Engine, what: Erasure) -> int:
    """Delete the prediction-log rows of the erased texts; their ids are kept for the copies that
    point at them."""
    pred = db.predictions.c
    match = sa.or_(pred.text_hash.in_(what.hashes), pred.text.in_(what.texts))
    with engine.begin() as conn:
        what.prediction_ids |= set(conn.execute(sa.select(pred.id).where(match)).scalars())
        return _delete_in(conn, db.predictions, pred.id, what.prediction_ids)


def _purge_predictions(_p: Project, engine: Engine, purge: Purge) -> int:
    """Blank the raw text of prediction-log rows older than the cutoff; the rows, their hashes and
    ids stay."""
    pred = db.predictions.c
    old = sa.and_(pred.created_at < purge.cutoff, pred.text.is_not(None))
    with engine.begin() as conn:
        purge.prediction_ids |= set(conn.execute(sa.select(pred.id).where(old)).scalars())
        return conn.execute(db.predictions.update().where(old).values(text=None)).rowcount


def _delete_in(conn: sa.Connection, table: sa.Table, column: sa.Column, ids: Collection) -> int:
    """Delete rows whose `column` is in `ids`, in chunks (SQLite's parameter limit)."""
    ids, n = list(ids), 0
    for i in range(0, len(ids), 500):
        n += conn.execute(table.delete().where(column.in_(ids[i:i + 500]))).rowcount
    return n


def _forget_shadow(_p: Project, engine: Engine, what: Erasure) -> int:
    """Delete the challenger's scores of the erased predictions."""
    with engine.begin() as conn:
        return _delete_in(conn, db.shadow_predictions, db.shadow_predictions.c.prediction_id,
                          what.prediction_ids)


def _forget_feedback(_p: Project, engine: Engine, what: Erasure) -> int:
    """Delete the feedback rows holding an erased text or pointing at an erased prediction."""
    fb = db.feedback.c
    with engine.begin() as conn:
        rows = pd.DataFrame(conn.execute(sa.select(fb.id, fb.text, fb.prediction_id)).all(),
                            columns=["id", "text", "prediction_id"])
        hit = _matches(rows["text"], what) | rows["prediction_id"].isin(what.prediction_ids)
        return _delete_in(conn, db.feedback, fb.id, rows.loc[hit, "id"].tolist())


def _purge_feedback(_p: Project, engine: Engine, purge: Purge) -> int:
    """Feedback on a purged prediction carries its text: blanked too (it is no longer
    exported or counted; see db.pending_feedback)."""
    fb = db.feedback.c
    ids, n = list(purge.prediction_ids), 0
    with engine.begin() as conn:
        for i in range(0, len(ids), 500):
            n += conn.execute(db.feedback.update().where(
                fb.prediction_id.in_(ids[i:i + 500]), fb.text != "").values(text="")).rowcount
    return n


def _forget_answers(_p: Project, engine: Engine, what: Erasure) -> int:
    """Delete the labeling answers given for the erased texts."""
    with engine.begin() as conn:
        return conn.execute(db.label_answers.delete().where(
            db.label_answers.c.text_hash.in_(what.hashes))).rowcount


def _nothing(*_args: Any) -> int:
    """A place that holds no text the retention purge applies to."""
    return 0


# --- the queue files -----------------------------------------------------------------------


def _rewrite_csv(path: Path, drop: Callable[[pd.DataFrame], pd.Series]) -> int:
    """Rewrite a queue file without the rows `drop` marks (atomically); rows dropped."""
    if path is None or not path.is_file():
        return 0
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    if rows.empty:
        return 0
    hit = drop(rows)
    if hit.any():
        tmp = path.with_name(f".{path.name}.tmp")
        rows[~hit].to_csv(tmp, index=False)
        tmp.replace(path)
    return int(hit.sum())


def _forget_label_queue(project: Project, _e: Engine, what: Erasure) -> int:
    """Rewrite the labeling queue without the erased texts."""
    return _rewrite_csv(project.path(project.params().paths.label_queue),
                        lambda q: _matches(q["text"], what))


def _forget_active_queue(project: Project, _e: Engine, what: Erasure) -> int:
    """Rewrite the active-learning queue without the erased texts and predictions."""
    def drop(q: pd.DataFrame) -> pd.Series:
        hit = _matches(q["text"], what)
        if "prediction_id" in q:
            hit |= q["prediction_id"].isin(what.prediction_ids)
        return hit

    return _rewrite_csv(project.path(project.params().paths.active_queue), drop)


def _purge_active_queue(project: Project, engine: Engine, _purge: Purge) -> int:
    """Served items whose prediction no longer keeps its text (purged now or before, or
    logged hash-only) leave the queue: the queue never keeps what the log may not."""
    path = project.path(project.params().paths.active_queue)
    if not path.is_file():
        return 0
    queue = pd.read_csv(path, dtype=str, keep_default_na=False)
    ids = set(queue.get("prediction_id", pd.Series(dtype=str))) - {""}
    pred = db.predictions.c
    with engine.connect() as conn:
        kept = set(conn.execute(sa.select(pred.id).where(
            pred.id.in_(list(ids)), pred.text.is_not(None))).scalars()) if ids else set()
    return _rewrite_csv(path, lambda q: (q["prediction_id"] != "") & ~q["prediction_id"].isin(kept)
                        if "prediction_id" in q else pd.Series(False, index=q.index))


def _forget_store(project: Project, _e: Engine, what: Erasure) -> int:
    """The DVC feedback store: batches holding an erased text are rewritten without it and the
    store is versioned again (`dvc add`)."""
    from textloop.loop.store import rewrite_store

    return rewrite_store(project, lambda rows: _matches(rows["text"], what))


# the store first: when DVC cannot version its rewrite, nothing else has been erased yet (the
# tombstone is versioned before any place is walked)
PLACES: tuple[Place, ...] = (
    Place("feedback_store", "paths.feedback: the DVC-versioned label batches (training data)",
          _forget_store, _nothing),
    Place("prediction_log", "predictions: every served text (or its hash only)",
          _forget_predictions, _purge_predictions),
    Place("shadow_log", "shadow_predictions: the challenger's answer per served prediction",
          _forget_shadow, _nothing),
    Place("feedback", "feedback: /feedback rows and agreed /label answers, until exported",
          _forget_feedback, _purge_feedback),
    Place("label_answers", "label_answers: each /label answer (text hash only)",
          _forget_answers, _nothing),
    Place("label_queue", "paths.label_queue: the label stage's rows without a trusted label",
          _forget_label_queue, _nothing),
    Place("active_queue", "paths.active_queue: the /label page's items (pool and traffic)",
          _forget_active_queue, _purge_active_queue),
)


def erase(project: Project, engine: Engine, hashes: set[str], texts: set[str]) -> dict[str, int]:
    """Remove every copy of the texts from every registered place; rows removed per place."""
    what = Erasure(hashes | {f for t in texts for f in hash_forms(t)}, texts)
    out = {place.name: place.forget(project, engine, what) for place in PLACES}
    log.info("forget: removed %s", ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


def purge(project: Project | None, engine: Engine, retention_days: float | None,
          now: dt.datetime | None = None) -> dict[str, Any]:
    """serve.retention_days: blank the text of predictions older than the cutoff and of every
    copy of them the registry knows (feedback on them, their queue items); recorded in
    `purges`. None: nothing purged."""
    if retention_days is None:
        return {"retention_days": None, "rows_purged": 0}
    cutoff = (now or db.utcnow()) - dt.timedelta(days=retention_days)
    state = Purge(cutoff)
    places = {}
    for place in PLACES:
        if project is not None or place.name in ("prediction_log", "feedback"):
            places[place.name] = place.purge(project, engine, state)
    out = {"retention_days": float(retention_days), "cutoff": cutoff,
           "rows_purged": places["prediction_log"]}
    out["purge_id"] = db.insert_row(engine, db.purges, dict(out))
    out["places"] = places
    log.info("retention: purged the text of %d prediction(s) older than %s (%g days); %s",
             out["rows_purged"], cutoff.isoformat(timespec="seconds"), retention_days,
             ", ".join(f"{k} {v}" for k, v in places.items()))
    return out


def is_erased(engine: Engine, text: str) -> bool:
    """Whether `text` was erased (`textloop forget`): a stale copy of it (a /label page opened
    before the erasure) must not be written back."""
    with engine.connect() as conn:
        return conn.execute(sa.select(db.erasures.c.id).where(
            db.erasures.c.text_hash.in_(hash_forms(str(text)))).limit(1)).first() is not None
