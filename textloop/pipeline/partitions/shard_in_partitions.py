"""The shard stage in partitions (textloop.pipeline.partitions)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.shard import shard_parts as sp
from textloop.core.config import Params
from textloop.core.layout import Project
from textloop.core.text import text_keys
from textloop.pipeline.partitions import partition_files as tp
from textloop.pipeline.partitions import quarantine_reasons, run_map, scratch_dir, use_partitions


def wanted(project: Project) -> bool:
    """Shard runs partitioned when use_partitions says so on labeled.parquet's rows."""
    p = project.params()
    return use_partitions(p.backend, tp.parquet_rows(project.path(p.paths.labeled)))


def _shard_keys(job: tuple) -> dict[str, Any]:
    """Dask task: one labeled partition's compact facts: LSH band keys of its texts (when
    near-duplicates are on), the explicit test rows' positions and text keys, labels, origins,
    whether it has a rating."""
    from tasks.shard import label_origins

    part, nd = job
    df = tp.read_partition(part)
    out: dict[str, Any] = {"n": len(df)}
    if nd["enabled"] and len(df):
        keys, idx = sp.band_keys(df["text"].tolist(), nd["threshold"], nd["shingle_words"],
                                 nd["num_perm"])
        out.update(bands=keys, positions=idx + part.start)
    explicit = (df["role"] == "test").to_numpy()
    out["test_positions"] = np.flatnonzero(explicit) + part.start
    out["test_keys"] = text_keys(df["text"][explicit].tolist())
    out["has_rating"] = bool("rating" in df and df["rating"].notna().any())
    out["label"] = df["label"].astype(object).to_numpy()
    out["label_origin"] = label_origins(df).to_numpy(dtype=object)
    return out


def _shard_globals(project: Project, p: Params, parts: list[tp.Partition],
                   facts: list[dict]) -> sp.ShardGlobals:
    """Groups over every partition's band keys, the canonical text of each group of 2+ (one
    pass over the texts), and the explicit test rows' keys and groups."""
    n = sum(f["n"] for f in facts)
    nd = p.shard.near_duplicates
    if nd.enabled and n:
        with_keys = [f for f in facts if "bands" in f]
        bands = np.concatenate([f["bands"] for f in with_keys]) if with_keys else \
            np.zeros((0, 1), dtype=np.uint64)
        positions = np.concatenate([f["positions"] for f in with_keys]) if with_keys else \
            np.zeros(0, dtype=np.int64)
        groups = sp.groups_from_bands(bands, positions, n)
        del bands
    else:
        groups = np.arange(n, dtype=np.int64)
    multi = np.bincount(groups, minlength=n)[groups] > 1
    canonical: dict[int, str] = {}
    for part in parts:
        if multi[part.start:part.start + part.rows].any():
            df = tp.read_partition(part)[["text"]]
            pos = df.index.to_numpy()
            sp.min_texts(df, np.where(multi[pos], groups[pos], -1), canonical)
    test_pos = np.concatenate([f["test_positions"] for f in facts]) if facts else np.zeros(0, int)
    return sp.ShardGlobals(groups, canonical, bool(len(test_pos)),
                           {k for f in facts for k in f["test_keys"]}, groups[test_pos],
                           nd.enabled)


class _ShardWriter:
    """Each split's rows, in order, as part-NNNNN.parquet files of rows_per_shard rows
    (tasks.shard.write_shards' files: the same frames, so the same bytes)."""

    def __init__(self, folder: Path, cols: list[str], rows: int) -> None:
        from tasks.shard import SPLITS

        self.folder, self.cols, self.rows = folder, cols, rows
        self.buf: dict[str, list[pd.DataFrame]] = {s: [] for s in SPLITS}
        self.count = dict.fromkeys(SPLITS, 0)
        self.files = dict.fromkeys(SPLITS, 0)

    def add(self, df: pd.DataFrame) -> None:
        """Queue a partition's rows; write every full file."""
        for name in self.buf:
            part = df[df["split"] == name][self.cols]
            if len(part):
                self.buf[name].append(part)
                self.count[name] += len(part)
            while self.count[name] >= self.rows:
                self._flush(name)

    def _flush(self, name: str) -> None:
        """Write the split's next file from the front of its queue."""
        from tasks.shard import write_shard_file

        rows = pd.concat(self.buf[name]).reset_index(drop=True)
        (self.folder / name).mkdir(parents=True, exist_ok=True)
        write_shard_file(rows.iloc[:self.rows],
                         self.folder / name / f"part-{self.files[name]:05d}.parquet")
        self.files[name] += 1
        rest = rows.iloc[self.rows:]
        self.buf[name], self.count[name] = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        """Write what is left of each split."""
        for name in self.buf:
            if self.count[name]:
                self._flush(name)



def run(project: Project) -> dict:
    """The shard stage in partitions: the same shard files (bytes), quarantine/shard.parquet and
    the same split report (tasks.shard.split_report on compact columns)."""
    from tasks.shard import META_COLUMNS, SHARD_COLUMNS, check_splits, split_report

    p = project.params()
    scratch = scratch_dir(project, "shard")
    parts = tp.plan(project.path(p.paths.labeled), p.backend.partition_rows)
    nd = p.shard.near_duplicates.model_dump()
    facts = run_map(_shard_keys, [(part, nd) for part in parts], p.backend)
    g = _shard_globals(project, p, parts, facts)
    meta = [c for c in META_COLUMNS if any(f["has_rating"] for f in facts)]
    folder = project.path(p.paths.shards)
    shutil.rmtree(folder, ignore_errors=True)  # rebuilt from scratch (DVC semantics)
    writer = _ShardWriter(folder, SHARD_COLUMNS + meta,
                          p.shard.rows_per_shard)
    compact, leaked, near = [], [], []
    for part in parts:
        out, lk, nr = sp.assign_partition(tp.read_partition(part), p.shard, g)
        writer.add(out)
        compact.append(out[["split", "exact_split", "label", "dup_group"]])
        leaked.append(scratch / f"leaked-{part.start:012d}.parquet")
        near.append(scratch / f"near-{part.start:012d}.parquet")
        tp.write_part(lk, leaked[-1])
        tp.write_part(nr, near[-1])
    split = pd.concat(compact, ignore_index=True)
    check_splits(split)
    writer.close()
    tp.concat_parts(leaked + near, project.path(p.paths.quarantine) / "shard.parquet",
                    p.backend.partition_rows)
    report = split_report(split, g.groups.size, quarantine_reasons(leaked + near), p.shard.min_class_share)
    shutil.rmtree(scratch)
    return report
