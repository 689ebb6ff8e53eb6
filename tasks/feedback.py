"""feedback: an append-only store of corrected labels and its training watermark.

Whether the labels warrant a retrain is the policy's call (tasks/monitor/retrain_rule.py), not this module's."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.label import canonical_label
from textloop.core.errors import UserError, where
from textloop.core.text import normalize_text

log = logging.getLogger(__name__)

STORE_COLUMNS = ["feedback_id", "text", "label", "prediction_id", "source", "added_at"]


def read_store(folder: Path) -> pd.DataFrame:
    """Every batch in the store, oldest first, with the file each row came from."""
    files = sorted(Path(folder).glob("batch-*.parquet")) if Path(folder).is_dir() else []
    frames = [pd.read_parquet(f).assign(file=f.name) for f in files]
    if not frames:
        return pd.DataFrame(columns=[*STORE_COLUMNS, "file"])
    return pd.concat(frames, ignore_index=True)


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
    if not known or canon in known:
        return canon
    same_case = [k for k in known if k.casefold() == canon.casefold()]
    if len(same_case) == 1:
        return same_case[0]
    raise UserError(f"{place}: unknown label {label!r} (known: {', '.join(known)})")


def append_batch(folder: Path, rows: pd.DataFrame, source: str = "feedback") -> Path:
    """Append a new immutable batch file; existing batches are never rewritten."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    batch = pd.DataFrame({
        "feedback_id": [uuid.uuid4().hex for _ in range(len(rows))],
        "text": rows["text"].astype(str).to_numpy(),
        "label": rows["label"].astype(str).to_numpy(),
        "prediction_id": rows["prediction_id"].to_numpy() if "prediction_id" in rows else None,
        "source": source, "added_at": now.isoformat()})
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

