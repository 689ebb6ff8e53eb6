"""`textloop label next`: score the labeling pool (the label stage's queue) and the served
traffic (the prediction log) with the champion and write the rows worth labeling first to the
active queue file (`paths.active_queue`), the order the /label page shows them in.

The choice itself is tasks/active.select_batch (pure); this module gathers the candidates,
scores them and writes the file."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tasks.label.active import select_batch, strategy_for
from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.loop import db

log = logging.getLogger(__name__)

QUEUE_COLUMNS = ["rank", "item_id", "origin", "text", "guess", "confidence", "score",
                 "strategy", "row_id", "prediction_id", "reason", "text_hash", "task"]


def text_hash(text: str) -> str:
    """sha256 of the UTF-8 text: the same hash the prediction log keeps."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pool_candidates(queue_file: Path) -> pd.DataFrame:
    """The label stage's queue (rows without a trusted label) as items `pool:<row_id>`; rows the
    label stage sent for review as suspected label errors keep that origin."""
    if not queue_file.is_file():
        return pd.DataFrame(columns=["item_id", "origin", "text", "row_id", "prediction_id",
                                     "reason"])
    q = pd.read_csv(queue_file, dtype=str, keep_default_na=False)
    reason = q["reason"] if "reason" in q else pd.Series("", index=q.index)
    origin = np.where(reason.str.contains("suspect"), "suspected_error", "pool")
    return pd.DataFrame({"item_id": "pool:" + q["row_id"], "origin": origin, "text": q["text"],
                         "row_id": q["row_id"], "prediction_id": "", "reason": reason})


def traffic_candidates(engine: Engine, limit: int) -> pd.DataFrame:
    """The newest `limit` served predictions that got no feedback, one per distinct text, as
    items `traffic:<prediction id>`."""
    cols = ["item_id", "origin", "text", "row_id", "prediction_id", "reason"]
    if limit <= 0:
        return pd.DataFrame(columns=cols)
    answered = sa.select(db.feedback.c.prediction_id).where(db.feedback.c.prediction_id.is_not(None))
    query = (sa.select(db.predictions.c.id, db.predictions.c.text, db.predictions.c.text_hash)
             .where(db.predictions.c.id.not_in(answered))
             .order_by(db.predictions.c.created_at.desc()).limit(limit))
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(query).mappings().all(), columns=["id", "text",
                                                                            "text_hash"])
    rows = rows.drop_duplicates("text_hash")
    return pd.DataFrame({"item_id": "traffic:" + rows["id"], "origin": "traffic",
                         "text": rows["text"], "row_id": "", "prediction_id": rows["id"],
                         "reason": "served"})


def settled_items(engine: Engine) -> set[str]:
    """Items whose answers are complete (agreed or in review): not offered again."""
    query = sa.select(db.label_answers.c.item_id).where(db.label_answers.c.status != "waiting")
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(query)}


def next_batch(project: Project, n: int, strategy: str | None = None, model: Any = None,
               engine: Engine | None = None) -> pd.DataFrame:
    """Choose the `n` items to label next and write them to `paths.active_queue` (rank 1 first).

    Candidates: the label queue + unanswered served traffic, minus settled items; scored by
    `model` (default: the champion) with `strategy` (default `label.active.strategy`). Returns
    the written frame (QUEUE_COLUMNS). Raises UserError when there is nothing to score or no
    champion."""
    from textloop.loop.retrain_policy import policy_db_url

    params = project.params()
    cfg = params.label.active
    engine = engine if engine is not None else db.open_db(policy_db_url(project))
    cands = pd.concat([pool_candidates(project.path(params.paths.label_queue)),
                       traffic_candidates(engine, cfg.traffic_rows)], ignore_index=True)
    cands = cands[~cands["item_id"].isin(settled_items(engine))].reset_index(drop=True)
    if cands.empty:
        raise UserError(f"{params.paths.label_queue}: nothing to label (no queued rows and no "
                        "unanswered served predictions)")
    if model is None:
        from textloop.pipeline.registry import load_champion

        model, info = load_champion(project)
        task = info["model_name"]
    else:
        from textloop.core.config import model_name

        task = model_name(params)
    strategy = strategy or strategy_for(cfg.strategy, people_labels(project.path(params.paths.labeled)),
                                        cfg.warmup_labels)
    return write_queue(project.path(params.paths.active_queue),
                       rank_items(cands, model, n, strategy, cfg).assign(task=task))


def people_labels(path: Path) -> int:
    """How many rows people have labeled so far: labeled.parquet rows of origin gold or feedback
    (every row when the file predates label_origin); 0 before the first label stage."""
    if not path.is_file():
        return 0
    import pyarrow.parquet as pq

    if "label_origin" not in pq.read_schema(path).names:
        return pq.ParquetFile(path).metadata.num_rows
    origin = pd.read_parquet(path, columns=["label_origin"])["label_origin"]
    return int(origin.isin(["gold", "feedback"]).sum())


def rank_items(cands: pd.DataFrame, model: Any, n: int, strategy: str, cfg: Any) -> pd.DataFrame:
    """Score candidates with the model and keep the chosen n, most informative first."""
    texts = cands["text"].astype(str).tolist()
    proba = np.asarray(model.predict_proba(texts))
    chosen = select_batch(texts, proba, n, strategy, diversity=cfg.diversity,  # type: ignore[arg-type]
                          candidates_per_pick=cfg.candidates_per_pick, balance=cfg.balance)
    pos = chosen["position"].to_numpy()
    classes = [str(c) for c in model.classes_]
    out = cands.iloc[pos].reset_index(drop=True)
    out.insert(0, "rank", chosen["rank"].to_numpy())
    out["guess"] = [classes[i] for i in proba[pos].argmax(axis=1)]
    out["confidence"] = proba[pos].max(axis=1).round(6)
    out["score"] = chosen["score"].to_numpy().round(6)
    out["strategy"] = strategy
    out["text_hash"] = [text_hash(t) for t in out["text"]]
    out["task"] = ""  # the task the queue is for: next_batch sets it
    return out[QUEUE_COLUMNS]


def write_queue(path: Path, queue: pd.DataFrame) -> pd.DataFrame:
    """Write the active queue atomically (the /label page may be reading it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    queue.to_csv(tmp, index=False)
    tmp.replace(path)
    log.info("label next: %d items written to %s", len(queue), path)
    return queue


def read_queue(path: Path) -> pd.DataFrame:
    """The active queue in rank order (empty when `label next` has not run). A queue written
    before a column existed (e.g. `task`) reads with that column empty."""
    if not path.is_file():
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    queue = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in QUEUE_COLUMNS:
        if col not in queue.columns:
            queue[col] = ""
    return queue.sort_values("rank", key=lambda s: s.astype(int), kind="stable"
                             ).reset_index(drop=True)
