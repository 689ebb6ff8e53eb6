"""shard's plan (SHARD_PLAN, textloop.core.frame_plan): MinHash LSH band keys per partition
(scan; tasks.shard.neardup's shingles and signatures), near-duplicate groups over the band keys of
every partition and the test set's facts (decide), tasks.shard's split rule on each partition
given the facts about the whole corpus (apply), the split report (finish). One frame is one
partition."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.shard import hashed_split
from textloop.core.errors import UserError
from textloop.core.frame_plan import FramePlan, Step
from textloop.core.quarantine import quarantine_rows
from textloop.core.splits import (
    MACHINE_ORIGINS,
    META_COLUMNS,
    SHARD_COLUMNS,
    SPLITS,
    class_balance,
    label_origins,
)
from textloop.core.text import text_keys

log = logging.getLogger(__name__)

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finalizer


def _mix(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One step of an order-sensitive 64-bit hash: splitmix64's finalizer over h ^ v."""
    h = h ^ v.astype(np.uint64)
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def band_keys(texts: Sequence[str], threshold: float, shingle_words: int, num_perm: int,
              seed: int = 1, batch: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Per text with a shingle: its MinHash LSH band keys (uint64 [rows, bands], a 64-bit hash of
    the band's values), with tasks.shard.neardup's own shingles, signatures and datasketch's (bands,
    rows) for threshold/num_perm. Returns (keys, the local index of each row that has them).
    Computed `batch` texts at a time (per text, so the same values): the shingle arrays of a
    batch of reviews are ~10x its text, the part of a partition's memory that grows fastest."""
    from datasketch.lsh import _optimal_param

    bands = _optimal_param(threshold, num_perm, 0.5, 0.5)[0]
    keys, idx = [np.zeros((0, bands), dtype=np.uint64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(texts), batch):
        k, i = _band_keys(texts[start:start + batch], threshold, shingle_words, num_perm, seed)
        keys.append(k)
        idx.append(i + start)
    return np.concatenate(keys), np.concatenate(idx)


def _band_keys(texts: Sequence[str], threshold: float, shingle_words: int, num_perm: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`band_keys` of one batch of texts."""
    from datasketch.lsh import _optimal_param

    from tasks.shard.neardup import all_shingle_hashes, minhash_signatures

    hashes, counts = all_shingle_hashes(texts, shingle_words)
    sigs = minhash_signatures(hashes, counts, num_perm, seed)
    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(len(sigs), b + 1, dtype=np.uint64)
            for r in range(rows):
                h = _mix(h, sigs[:, b * rows + r])
            keys[:, b] = h
    return keys, np.flatnonzero(counts > 0)


def groups_from_bands(keys: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """Near-duplicate group id per row (int64 [n], the smallest position of its group): rows
    sharing any band key are linked, links closed transitively (tasks.shard.neardup's rule, on band
    keys gathered from every partition instead of signatures)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = []
    for b in range(keys.shape[1]):
        _, first, bucket = np.unique(keys[:, b], return_index=True, return_inverse=True)
        head = first[bucket.ravel()]
        linked = head != np.arange(len(head))
        edges.append(np.column_stack([np.flatnonzero(linked), head[linked]]))
    e = positions[np.concatenate(edges)] if edges else np.zeros((0, 2), dtype=np.int64)
    graph = coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, label, np.arange(n, dtype=np.int64))
    return smallest[label]


def min_texts(df: pd.DataFrame, groups: np.ndarray, best: dict[int, str]) -> None:
    """Update `best` (group -> smallest text so far) with a partition's rows of groups that
    have 2+ members (`groups`: the partition's group ids, -1 for a row alone)."""
    for g, t in zip(groups.tolist(), df["text"].tolist(), strict=True):
        if g >= 0 and (g not in best or t < best[g]):
            best[g] = t


@dataclass
class ShardGlobals:
    """What a partition's split needs from every row: group per position, the canonical
    (smallest) text of each group of 2+, whether an explicit test set exists, the explicit test
    rows' text keys and groups."""

    groups: np.ndarray
    canonical: dict[int, str]
    explicit_any: bool
    test_keys: set[str]
    test_groups: np.ndarray
    near_enabled: bool
    meta: tuple[str, ...] = ()  # metadata columns some row has a value in (written to shards)


def assign_partition(df: pd.DataFrame, cfg: Any, g: ShardGlobals
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """assign_splits on one partition, with the groups and test-set facts of the
    whole corpus: (rows with split, exact_split, dup_group; rows overlapping the test set;
    rows near-duplicate of a test row), each in row order."""
    df = df.assign(label_origin=label_origins(df))
    texts = df["text"].tolist()
    groups = g.groups[df.index.to_numpy()]
    keys = [g.canonical.get(x, t) for x, t in zip(groups.tolist(), texts, strict=True)]
    explicit = (df["role"] == "test").to_numpy()
    split = hashed_split(keys, cfg, g.explicit_any)
    exact = hashed_split(texts, cfg, g.explicit_any) if g.near_enabled else split
    split, exact = np.where(explicit, "test", split), np.where(explicit, "test", exact)
    machine = df["label_origin"].isin(MACHINE_ORIGINS).to_numpy()
    out = df.assign(split=np.where(machine, "train", split),
                    exact_split=np.where(machine, "train", exact), dup_group=groups)
    in_test = [k in g.test_keys for k in text_keys(texts)] if g.test_keys else [False] * len(df)
    leaked = (~explicit) & np.array(in_test, dtype=bool)
    near = (~explicit) & (~leaked) & np.isin(groups, g.test_groups)
    drop = ["split", "exact_split", "dup_group"]
    return (out[~(leaked | near)],
            quarantine_rows(out[leaked], "overlaps_test_set", "shard").drop(columns=drop),
            quarantine_rows(out[near], "near_duplicate_of_test", "shard").drop(columns=drop))


def scan(df: pd.DataFrame, cfg: Any) -> Step:
    """One partition's compact facts: LSH band keys of its texts (when near-duplicates are on),
    the explicit test rows' positions and text keys, which metadata columns have a value."""
    nd = cfg.near_duplicates
    out: dict[str, Any] = {"n": len(df)}
    if nd.enabled and len(df):
        keys, idx = band_keys(df["text"].tolist(), nd.threshold, nd.shingle_words, nd.num_perm)
        out.update(bands=keys, positions=idx + df.index[0] if len(idx) else idx)
    explicit = (df["role"] == "test").to_numpy()
    out["test_positions"] = df.index.to_numpy()[explicit]
    out["test_keys"] = text_keys(df["text"][explicit].tolist())
    out["meta"] = [c for c in META_COLUMNS if c in df and df[c].notna().any()]
    return Step(facts=out)


def decide(facts: Sequence[dict], cfg: Any, frames: Callable[[int], pd.DataFrame]) -> ShardGlobals:
    """Groups over every partition's band keys, the canonical text of each group of 2+ (a second
    look at the partitions holding such groups), and the explicit test rows' keys and groups."""
    n = sum(f["n"] for f in facts)
    with_keys = [f for f in facts if "bands" in f]
    if cfg.near_duplicates.enabled and with_keys:
        groups = groups_from_bands(np.concatenate([f["bands"] for f in with_keys]),
                                   np.concatenate([f["positions"] for f in with_keys]), n)
    else:
        groups = np.arange(n, dtype=np.int64)
    multi = np.bincount(groups, minlength=n)[groups] > 1
    canonical: dict[int, str] = {}
    start = 0
    for i, f in enumerate(facts):
        if multi[start:start + f["n"]].any():
            df = frames(i)[["text"]]
            pos = df.index.to_numpy()
            min_texts(df, np.where(multi[pos], groups[pos], -1), canonical)
        start += f["n"]
    test_pos = np.concatenate([np.zeros(0, np.int64), *[f["test_positions"] for f in facts]])
    meta = tuple(c for c in dict.fromkeys(c for f in facts for c in f["meta"]))
    return ShardGlobals(groups, canonical, bool(len(test_pos)),
                        {k for f in facts for k in f["test_keys"]}, groups[test_pos],
                        cfg.near_duplicates.enabled, meta)


def apply(df: pd.DataFrame, cfg: Any, g: ShardGlobals) -> Step:
    """assign_partition on one partition: its assigned rows (metadata columns no row has a value
    in left out) and its two quarantine parts."""
    out, leaked, near = assign_partition(df, cfg, g)
    unused = [c for c in META_COLUMNS if c in out and c not in g.meta]
    return Step(parts={"assigned": out.drop(columns=unused), "overlaps_test_set": leaked,
                       "near_duplicate_of_test": near})


def finish(scanned: Sequence[dict], applied: Sequence[Any], g: ShardGlobals,
           outputs: Mapping[str, pd.DataFrame], cfg: Any) -> dict:
    """The split report (split_report) once the splits pass check_splits."""
    check_splits(outputs["assigned"])
    return split_report(outputs["assigned"], int(g.groups.size), outputs["quarantine"],
                        cfg.min_class_share)


SHARD_PLAN = FramePlan(scan=scan, decide=decide, apply=apply, finish=finish,
                       outputs={"assigned": ("assigned",),
                                "quarantine": ("overlaps_test_set", "near_duplicate_of_test")},
                       compact={"assigned": ("split", "exact_split", "label", "dup_group"),
                                "quarantine": ("reason",)})


def assign_splits(df: pd.DataFrame, cfg: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split labeled rows (SHARD_PLAN on one frame: the split rule of tasks.shard.split_plan,
    near-duplicate groups from LSH band keys); weak and pseudo rows go to train, never val or
    test. Non-test rows grouped with an explicit test row are quarantined as
    `near_duplicate_of_test` (exact copies stay `overlaps_test_set`). The returned frame carries
    `dup_group` (the group id) and `exact_split` (the exact-text rule's split) for the report."""
    from textloop.core.frame_plan import joined

    df = df.reset_index(drop=True)
    scanned = SHARD_PLAN.scan(df, cfg)
    decision = SHARD_PLAN.decide([scanned.facts], cfg, lambda i: df)
    parts = SHARD_PLAN.apply(df, cfg, decision).parts
    return (parts["assigned"].reset_index(drop=True),
            joined([parts[p] for p in SHARD_PLAN.outputs["quarantine"]]))


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
