"""feedback: an append-only store of corrected labels and its training watermark.

Whether the labels warrant a retrain is the policy's call (tasks/monitor/retrain_rule.py), not this module's."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from textloop.core.errors import UserError, where
from textloop.core.label_values import canonical_label, known_label
from textloop.core.text import normalize_text, text_hash

log = logging.getLogger(__name__)

# a stored label is an event with identity: which task (registered model), which text (hash),
# who gave it (annotator, else the source), in which batch (batch_id: the content's id)
STORE_COLUMNS = ["feedback_id", "text", "label", "prediction_id", "source", "added_at",
                 "text_hash", "task", "annotator", "batch_id"]
EVENT_KEY = ["task", "text_hash", "annotator"]


def read_store(folder: Path) -> pd.DataFrame:
    """Every batch in the store, oldest first, with the file each row came from."""
    files = sorted(Path(folder).glob("batch-*.parquet")) if Path(folder).is_dir() else []
    frames = [_identified(pd.read_parquet(f), f) for f in files]
    if not frames:
        return pd.DataFrame(columns=[*STORE_COLUMNS, "file"])
    return pd.concat(frames, ignore_index=True)


def _identified(batch: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A batch written before labels carried their identity gets one: the text hash, no task
    (""; shared only when asked, ingest.feedback_tasks), the source as annotator and the file
    name as batch id."""
    if "text_hash" not in batch:
        batch["text_hash"] = batch["text"].map(text_hash)
    if "task" not in batch:
        batch["task"] = ""
    if "annotator" not in batch:
        batch["annotator"] = batch["source"]
    if "batch_id" not in batch:
        batch["batch_id"] = path.stem
    return batch.assign(file=path.name)


def label_events(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    """Rows (text, label[, prediction_id, task, annotator]) as label events: with the text hash,
    the task ("" when not given) and the annotator (the source when not given); index kept."""
    out = pd.DataFrame({"text": rows["text"].astype(str), "label": rows["label"].astype(str)},
                       index=rows.index)
    out["prediction_id"] = rows.get("prediction_id")
    out["text_hash"] = out["text"].map(text_hash)
    out["task"] = rows["task"].fillna("").astype(str) if "task" in rows else ""
    annotator = rows["annotator"] if "annotator" in rows else pd.Series(None, index=rows.index)
    out["annotator"] = annotator.where(annotator.notna() & (annotator.astype(str) != ""),
                                       source).astype(str)
    return out


def batch_identity(events: pd.DataFrame) -> str:
    """The id of a batch: a digest of its events (task, text hash, annotator, label), whatever
    their order, so importing the same content again is recognised."""
    lines = sorted("\t".join(map(str, r)) for r in
                   events[[*EVENT_KEY, "label"]].itertuples(index=False))
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def refuse_contradictions(events: pd.DataFrame, path: Path | str) -> None:
    """One annotator (or source) giving one text two labels in one batch cannot be settled:
    raises UserError naming the file, the rows (index + 1: file rows) and the labels."""
    n_labels = events.groupby(EVENT_KEY, sort=False)["label"].transform("nunique")
    bad = events[n_labels > 1]
    if bad.empty:
        return
    first = bad[bad["text_hash"] == bad["text_hash"].iloc[0]]
    rows = [str(int(i) + 1) for i in first.index]
    labels = ", ".join(repr(v) for v in dict.fromkeys(first["label"]))
    more = bad["text_hash"].nunique() - 1
    raise UserError(f"{path}, rows {', '.join(rows[:-1])} and {rows[-1]}: contradictory labels "
                    f"{labels} for the text {first['text'].iloc[0][:60]!r} from "
                    f"{first['annotator'].iloc[0]!r}" + (f" (and {more} more text(s))" if more
                                                        else ""))


def split_disagreements(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(agreed events, disagreements): texts different annotators labelled differently in one
    batch go to review, not to the store."""
    n_labels = events.groupby(["task", "text_hash"], sort=False)["label"].transform("nunique")
    return events[n_labels == 1], events[n_labels > 1]


def already_stored(store: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """Events whose (task, text, annotator) already has this label as its latest stored label:
    importing them again changes nothing."""
    if store.empty or events.empty:
        return pd.Series(False, index=events.index)
    latest = store.drop_duplicates(EVENT_KEY, keep="last").set_index(EVENT_KEY)["label"]
    keys = pd.MultiIndex.from_frame(events[EVENT_KEY])
    return pd.Series(latest.reindex(keys).to_numpy() == events["label"].to_numpy(),
                     index=events.index)


def settle(rows: pd.DataFrame) -> pd.DataFrame:
    """One label per text and task: the last answer wins (rows oldest first); rows whose text
    was purged (empty) are left out. Needs columns text, label[, task]."""
    if rows.empty:
        return rows
    rows = rows[rows["text"].astype(str) != ""]
    task = rows["task"].fillna("").astype(str) if "task" in rows else ""
    key = rows.assign(_task=task, _hash=rows["text"].map(text_hash))
    return rows[~key.duplicated(["_task", "_hash"], keep="last")]


def validate_rows(df: pd.DataFrame, path: Path | str, known_labels: Sequence[str] | None,
                  text_col: str = "text", label_col: str = "label") -> pd.DataFrame:
    """Corrections need a text and one label, spelled as ingest spells labels (canonical_label;
    a case variant of a known label is that label). Raises UserError naming file, row and
    column for no rows, a missing column, an empty or non-text text, a list/object label, or a
    label outside the known set (when one exists)."""
    for col in (text_col, label_col):
        if col not in df.columns:
            raise UserError(f"{where(path, column=col)}: column not found "
                            f"(columns are: {', '.join(map(str, df.columns))})")
    if df.empty:
        raise UserError(f"{path}: no rows to add")
    out = pd.DataFrame({"text": df[text_col], "label": df[label_col]}, index=df.index)
    out["prediction_id"] = df["prediction_id"].astype("string") if "prediction_id" in df else None
    labels = []
    for i, text, label in zip(range(1, len(out) + 1), out["text"], out["label"]):  # file rows
        if not isinstance(text, str) or not normalize_text(text):
            raise UserError(f"{where(path, i, text_col)}: empty text")
        labels.append(_known_label(label, known_labels, where(path, i, label_col)))
    out["label"] = labels
    return out


def _known_label(label: object, known: Sequence[str] | None, place: str) -> str:
    """One correction's label in its canonical spelling, mapped onto the known set."""
    if isinstance(label, (list, tuple, dict, set, np.ndarray)):
        raise UserError(f"{place}: expected one label (text or number), got "
                        f"{type(label).__name__} {str(label)[:60]!r}")
    canon = canonical_label(label)
    if canon is None:
        raise UserError(f"{place}: empty label")
    if not known:
        return canon
    found = known_label(canon, known)
    if found is not None:
        return found
    raise UserError(f"{place}: unknown label {label!r} (known: {', '.join(known)})")


def append_batch(folder: Path, rows: pd.DataFrame, source: str = "feedback") -> Path:
    """Append a new immutable batch file (its events identified: label_events, batch_identity);
    existing batches are never rewritten by an append."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    events = label_events(rows, source)
    batch = pd.DataFrame({
        "feedback_id": [uuid.uuid4().hex for _ in range(len(rows))],
        "text": events["text"].to_numpy(), "label": events["label"].to_numpy(),
        "prediction_id": events["prediction_id"].to_numpy(),
        "source": source, "added_at": now.isoformat(),
        "text_hash": events["text_hash"].to_numpy(), "task": events["task"].to_numpy(),
        "annotator": events["annotator"].to_numpy(), "batch_id": batch_identity(events)})
    name = f"batch-{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"
    batch.to_parquet(tmp, index=False)
    tmp.replace(folder / name)  # atomic: a reader never sees half a batch
    log.info("feedback: appended %d rows to %s", len(batch), folder / name)
    return folder / name


def new_rows(store: pd.DataFrame, consumed_files: Sequence[str]) -> pd.DataFrame:
    """Store rows that no training run has ingested yet."""
    return store[~store["file"].isin(set(consumed_files))] if len(store) else store


def write_watermark(path: Path, consumed_files: Sequence[str]) -> None:
    """Record the batches a training run ingested."""
    state = {"consumed_files": list(consumed_files), "at": datetime.now(UTC).isoformat()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2), encoding="utf-8")


def unconsumed(folder: Path, watermark: Path) -> pd.DataFrame:
    """Store rows newer than the last training run's watermark."""
    consumed = (json.loads(watermark.read_text(encoding="utf-8"))["consumed_files"]
                if watermark.is_file() else [])
    return new_rows(read_store(folder), consumed)

