"""The train/val/test split files: what the shard stage writes and every later stage reads.

The split names, the columns a shard file holds, who gave each row's label, which rows training
and testing may use, the reader, and the class-balance rule both the split report and the gate
metric `auto` apply. Kept apart from shard's own steps (tasks/shard/) so a stage that only reads
the splits runs, and is fingerprinted for, this contract alone: editing how shard splits reruns
shard, and the stages after it only through the data it writes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.errors import UserError

SPLITS = ("train", "val", "test")
SHARD_COLUMNS = ["row_id", "text", "label", "source", "origin", "label_origin"]
META_COLUMNS = ["rating"]  # metadata kept from ingest when a source has it (evaluate.slices)
HUMAN_ORIGINS = ("gold", "feedback")  # label_origin values people gave; the only ones in val/test
MACHINE_ORIGINS = ("weak", "pseudo")  # labeling functions / a model: train split only


def label_origins(df: pd.DataFrame) -> pd.Series:
    """Who gave each row's label (gold | feedback | weak | pseudo): the label_origin column, or
    for frames written before it existed, feedback for feedback-store rows and gold otherwise."""
    if "label_origin" in df.columns:
        return df["label_origin"].astype(str)
    source = df["source"] if "source" in df.columns else pd.Series("", index=df.index)
    return pd.Series(np.where(source == "feedback", "feedback", "gold"), index=df.index)


def training_rows(df: pd.DataFrame, use_weak: bool, use_pseudo: bool) -> pd.DataFrame:
    """The rows training may use: human labels always, weak rows when label.use_weak, pseudo
    rows when label.pseudo.enabled (a train shard written under other settings is filtered)."""
    allowed = {*HUMAN_ORIGINS, *(("weak",) if use_weak else ()), *(("pseudo",) if use_pseudo else ())}
    return df[label_origins(df).isin(allowed)].reset_index(drop=True)


def human_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows people labeled (gold, feedback): what a test score is computed on."""
    return training_rows(df, use_weak=False, use_pseudo=False)


def read_split(folder: Path, split: str) -> pd.DataFrame:
    """All shards of one split, in order."""
    files = sorted((Path(folder) / split).glob("part-*.parquet"))
    if not files:
        raise UserError(f"{Path(folder) / split}: no shards; run the shard stage first")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def class_balance(counts: Mapping[str, int], min_share: float) -> dict[str, Any]:
    """The one imbalance rule (split report, gate metric `auto`): the task is imbalanced when its
    rarest class holds less than `min_share` of the rows. imbalance_ratio = largest / smallest
    class count (1.0 balanced; None without rows)."""
    counts = {str(k): int(v) for k, v in counts.items() if int(v) > 0}
    total = sum(counts.values())
    if not counts:
        return {"imbalance_ratio": None, "minority_class": None, "minority_share": None,
                "imbalanced": False}
    minority = min(counts, key=lambda k: (counts[k], k))
    share = counts[minority] / total
    return {"imbalance_ratio": round(max(counts.values()) / counts[minority], 4),
            "minority_class": minority, "minority_share": round(share, 4),
            "imbalanced": len(counts) > 1 and share < min_share}
