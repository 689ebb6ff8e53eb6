"""shard: a deterministic train/val/test split by hashing the normalized text, written as
Parquet shards, with a class-balance report."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.config import ShardConfig
from textloop.core.errors import UserError
from textloop.core.frame_plan import FramePlan

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SHARD_COLUMNS = ["row_id", "text", "label", "source", "origin", "label_origin"]
META_COLUMNS = ["rating"]  # metadata kept from ingest when a source has it (evaluate.slices)
HUMAN_ORIGINS = ("gold", "feedback")  # label_origin values people gave; the only ones in val/test
MACHINE_ORIGINS = ("weak", "pseudo")  # labeling functions / a model: train split only


def bucket(text: str, salt: str) -> float:
    """A stable number in [0, 1) per text: adding data never moves an existing row."""
    digest = hashlib.blake2b(f"{salt}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def label_origins(df: pd.DataFrame) -> pd.Series:
    """Who gave each row's label (gold | feedback | weak | pseudo): the label_origin column, or
    for frames written before it existed, feedback for feedback-store rows and gold otherwise."""
    if "label_origin" in df.columns:
        return df["label_origin"].astype(str)
    source = df["source"] if "source" in df.columns else pd.Series("", index=df.index)
    return pd.Series(np.where(source == "feedback", "feedback", "gold"), index=df.index)


def split_plan(df: pd.DataFrame, cfg: ShardConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one split rule, per row (columns text and role): (split, the split the exact-text
    rule alone gives, near-duplicate group id). A row's split is the hash of its text, or with
    shard.near_duplicates.enabled of its near-duplicate group's canonical member (tasks.shard.neardup);
    an explicit test set (role == test) replaces the hashed test split."""
    texts = df["text"].tolist()
    groups, keys = _groups(texts, cfg)
    explicit = (df["role"] == "test").to_numpy()
    split = _hashed_split(keys, cfg, explicit.any())
    exact = split if keys is texts else _hashed_split(texts, cfg, explicit.any())
    return np.where(explicit, "test", split), np.where(explicit, "test", exact), groups


def split_names(df: pd.DataFrame, cfg: ShardConfig) -> np.ndarray:
    """train | val | test per row (split_plan). The label stage calls it too, so label-error
    detection and weak/pseudo labels touch train rows only. (It sees every clean row, shard only
    the labeled ones: a near-duplicate group can differ between the two, rarely.)"""
    return split_plan(df, cfg)[0]


def assign_splits(df: pd.DataFrame, cfg: ShardConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split labeled rows (SHARD_PLAN on one frame: the split rule of split_plan, near-duplicate
    groups from LSH band keys); weak and pseudo rows go to train, never val or test. Non-test
    rows grouped with an explicit test row are quarantined as `near_duplicate_of_test` (exact
    copies stay `overlaps_test_set`). The returned frame carries `dup_group` (the group id) and
    `exact_split` (the exact-text rule's split) for the report."""
    from textloop.core.frame_plan import joined

    plan = shard_plan()
    df = df.reset_index(drop=True)
    scanned = plan.scan(df, cfg)
    parts = plan.apply(df, cfg, plan.decide([scanned.facts], cfg, lambda i: df)).parts
    return (parts["assigned"].reset_index(drop=True),
            joined([parts[p] for p in plan.outputs["quarantine"]]))


def shard_plan() -> FramePlan:
    """The shard stage's plan (tasks/shard/shard_parts.py's steps)."""
    from tasks.shard import shard_parts as sp

    return FramePlan(scan=sp.scan, decide=sp.decide, apply=sp.apply, finish=sp.finish,
                     outputs={"assigned": ("assigned",),
                              "quarantine": ("overlaps_test_set", "near_duplicate_of_test")},
                     compact={"assigned": ("split", "exact_split", "label", "dup_group"),
                              "quarantine": ("reason",)})


def _groups(texts: list[str], cfg: ShardConfig) -> tuple[np.ndarray, list[str]]:
    """Group id per row and the text whose hash places it: its near-duplicate group's canonical
    member when the rule is enabled, else each row alone with its own text."""
    nd = cfg.near_duplicates
    if not nd.enabled or not texts:
        return np.arange(len(texts), dtype=np.int64), texts
    from tasks.shard.neardup import canonical_members, near_duplicate_groups

    groups = near_duplicate_groups(texts, nd.threshold, nd.shingle_words, nd.num_perm)
    return groups, canonical_members(texts, groups)


def _hashed_split(keys: list[str], cfg: ShardConfig, explicit_test: bool) -> np.ndarray:
    """train/val/test per row from the hash of its key (val only when a test set is given)."""
    u = np.array([bucket(t, cfg.salt) for t in keys])
    if explicit_test:
        return np.where(u < cfg.val_fraction, "val", "train")
    return np.where(u < cfg.test_fraction, "test",
                    np.where(u < cfg.test_fraction + cfg.val_fraction, "val", "train"))


def near_duplicate_report(df: pd.DataFrame, quarantined: pd.DataFrame) -> dict[str, int]:
    """What the near-duplicate rule did: groups of 2+ kept rows, the rows in them, rows whose
    split differs from the exact-text rule's (moved), and rows quarantined next to the test set."""
    if "dup_group" not in df:
        return {}
    sizes = df["dup_group"].value_counts()
    reasons = quarantined["reason"] if "reason" in quarantined else pd.Series([], dtype=object)
    return {"groups": int((sizes > 1).sum()), "rows_in_groups": int(sizes[sizes > 1].sum()),
            "rows_moved": int((df["split"] != df["exact_split"]).sum()),
            "rows_quarantined_near_duplicate_of_test":
                int((reasons == "near_duplicate_of_test").sum())}


def training_rows(df: pd.DataFrame, use_weak: bool, use_pseudo: bool) -> pd.DataFrame:
    """The rows training may use: human labels always, weak rows when label.use_weak, pseudo
    rows when label.pseudo.enabled (a train shard written under other settings is filtered)."""
    allowed = {*HUMAN_ORIGINS, *(("weak",) if use_weak else ()), *(("pseudo",) if use_pseudo else ())}
    return df[label_origins(df).isin(allowed)].reset_index(drop=True)


def human_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows people labeled (gold, feedback): what a test score is computed on."""
    return training_rows(df, use_weak=False, use_pseudo=False)


def check_splits(df: pd.DataFrame) -> None:
    """Training needs labeled rows, at least two classes and non-empty val and test splits."""
    if df.empty:
        raise UserError("shard: no labeled rows to split: every row lacks a trusted label (an "
                        "empty or unmapped label column?); they wait in the labeling queue "
                        "(paths.label_queue), counts in paths.label_report")
    for name in SPLITS:
        if not (df["split"] == name).any():
            raise UserError(f"shard: the {name} split is empty ({len(df)} labeled rows); "
                            "add data or change shard.val_fraction / shard.test_fraction")
    classes = df.loc[df["split"] == "train", "label"].nunique()
    if classes < 2:
        raise UserError(f"shard: the train split has {classes} class(es); need at least 2")


def write_shards(df: pd.DataFrame, folder: Path, rows_per_shard: int) -> dict[str, list[str]]:
    """Write each split as part-NNNNN.parquet files of at most rows_per_shard rows (ShardWriter
    on one frame)."""
    cols = SHARD_COLUMNS + [c for c in META_COLUMNS if c in df and df[c].notna().any()]
    writer = ShardWriter(folder, cols, rows_per_shard)
    writer.add(df)
    return writer.close()


def write_shard_stream(frames: Iterator[pd.DataFrame], folder: Path, rows_per_shard: int) -> None:
    """The shard stage's output: assigned rows, frame by frame in order, as each split's files
    (SHARD_COLUMNS and the metadata columns the frames carry)."""
    writer = None
    for df in frames:
        if writer is None:
            writer = ShardWriter(folder, SHARD_COLUMNS + [c for c in META_COLUMNS if c in df],
                                 rows_per_shard)
        writer.add(df)
    if writer is not None:
        writer.close()


class ShardWriter:
    """Each split's rows, in order, as part-NNNNN.parquet files of rows_per_shard rows: the same
    files however the rows arrive (one frame or many); a split with no rows gets one empty file."""

    def __init__(self, folder: Path, cols: list[str], rows: int) -> None:
        self.folder, self.cols, self.rows = folder, cols, rows
        self.buf: dict[str, list[pd.DataFrame]] = {s: [] for s in SPLITS}
        self.count = dict.fromkeys(SPLITS, 0)
        self.written: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.empty: pd.DataFrame | None = None  # the columns of a split with no rows

    def add(self, df: pd.DataFrame) -> None:
        """Queue a frame's rows; write every full file."""
        for name in SPLITS:
            part = df[df["split"] == name][self.cols]
            self.empty = part.iloc[:0] if self.empty is None else self.empty
            if len(part):
                self.buf[name].append(part)
                self.count[name] += len(part)
            while self.count[name] >= self.rows:
                self._flush(name)

    def _flush(self, name: str) -> None:
        """Write the split's next file from the front of its queue."""
        rows = pd.concat(self.buf[name]).reset_index(drop=True) if self.buf[name] else self.empty
        (self.folder / name).mkdir(parents=True, exist_ok=True)
        path = self.folder / name / f"part-{len(self.written[name]):05d}.parquet"
        write_shard_file(rows.iloc[:self.rows], path)
        self.written[name].append(path.name)
        rest = rows.iloc[self.rows:]
        self.buf[name], self.count[name] = ([rest] if len(rest) else []), len(rest)

    def close(self) -> dict[str, list[str]]:
        """Write what is left of each split (an empty split: one empty file); the file names."""
        for name in SPLITS:
            if self.count[name] or not self.written[name]:
                self._flush(name)
        return self.written


def write_shard_file(df: pd.DataFrame, path: Path) -> None:
    """One shard file (pandas' Arrow conversion, snappy, no index) with each column as one
    contiguous chunk: Parquet's page layout follows the Arrow chunks, so equal frames give equal
    bytes however they were assembled (the partitioned path builds them from pieces)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).combine_chunks(), path)


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


def split_report(df: pd.DataFrame, n_in: int, quarantined: pd.DataFrame,
                 min_class_share: float = 0.05) -> dict:
    """Rows and class balance per split; rows_in == sum of splits + quarantined. The train split's
    balance (class_balance) is reported at the top, with a warning when it is imbalanced."""
    report: dict = {"rows_in": n_in, "rows_quarantined": len(quarantined), "splits": {}}
    for name in SPLITS:
        part = df[df["split"] == name]
        counts = part["label"].value_counts().sort_index()
        report["splits"][name] = {
            "rows": len(part),
            "classes": {str(k): int(v) for k, v in counts.items()},
            "class_fraction": {str(k): round(v / max(len(part), 1), 4) for k, v in counts.items()},
        }
    nd = near_duplicate_report(df, quarantined)
    if nd:
        report["near_duplicates"] = nd
    total = sum(s["rows"] for s in report["splits"].values()) + len(quarantined)
    if total != n_in:
        raise AssertionError(f"shard lost rows: {report}")
    balance = class_balance(report["splits"]["train"]["classes"], min_class_share)
    report.update(balance, warnings=[])
    if balance["imbalanced"]:
        msg = (f"imbalanced classes: {balance['minority_class']!r} is "
               f"{balance['minority_share']:.2%} of the train split (< shard.min_class_share "
               f"{min_class_share:.0%}; ratio {balance['imbalance_ratio']}:1); the gate metric "
               "`auto` uses f1_macro")
        report["warnings"].append(msg)
        log.warning("shard: %s", msg)
    return report
