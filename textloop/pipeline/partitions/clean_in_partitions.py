"""The clean stage in partitions (textloop.pipeline.partitions)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.clean import clean_parts
from textloop.core.layout import Project
from textloop.pipeline.partitions import partition_files as tp
from textloop.pipeline.partitions import quarantine_reasons, run_map, scratch_dir, use_partitions

QUARANTINE_ORDER = ("empty_text", "too_short", "superseded_by_feedback", "conflicting_labels",
                    "duplicate_text/labeled", "duplicate_text/unlabeled")


def wanted(project: Project) -> bool:
    """Clean runs partitioned when use_partitions says so on raw.parquet's rows."""
    p = project.params()
    return use_partitions(p.backend, tp.parquet_rows(project.path(p.paths.raw)))


def _clean_normalise(job: tuple) -> tuple[pd.DataFrame, dict, int]:
    """Dask task: normalise one raw partition (clean.normalize_rows); writes the rows that stay
    and the empty/short quarantine parts; returns their compact keys, redaction counts, rows."""
    from tasks.clean import normalize_rows

    part, scratch, c = job
    df = tp.read_partition(part)
    kept, (empty, short), redaction = normalize_rows(df, c["strip_html"], c["lowercase"],
                                                     c["min_chars"], c["redact"])
    tag = f"{part.start:012d}"
    np.save(Path(scratch) / f"pos-{tag}.npy", kept.index.to_numpy(dtype=np.int64))
    tp.write_part(kept, Path(scratch) / f"norm-{tag}.parquet")
    tp.write_part(empty, Path(scratch) / f"q-empty_text-{tag}.parquet")
    tp.write_part(short, Path(scratch) / f"q-too_short-{tag}.parquet")
    return clean_parts.compact_rows(kept), redaction, len(df)


def _clean_split(job: tuple) -> int:
    """Dask task: one normalised partition split by the global decisions into kept rows and the
    quarantine parts of each decision; returns the rows kept."""
    tag, scratch, removed = job
    df = pd.read_parquet(Path(scratch) / f"norm-{tag}.parquet")
    df.index = pd.Index(np.load(Path(scratch) / f"pos-{tag}.npy"))
    kept, quarantined = clean_parts.clean_rows(df, removed)
    tp.write_part(kept, Path(scratch) / f"kept-{tag}.parquet")
    for name, q in quarantined.items():
        tp.write_part(q, Path(scratch) / f"q-{name.replace('/', '-')}-{tag}.parquet")
    return len(kept)



def run(project: Project) -> dict:
    """The clean stage in partitions: clean.parquet, quarantine/clean.parquet (rows in the
    in-memory order) and the same report (tasks.clean.clean_frame's)."""
    from tasks.clean import _report

    p = project.params()
    scratch = scratch_dir(project, "clean")
    parts = tp.plan(project.path(p.paths.raw), p.backend.partition_rows)
    c = p.clean.model_dump()
    results = run_map(_clean_normalise, [(part, str(scratch), c) for part in parts], p.backend)
    tags = [f"{part.start:012d}" for part in parts]
    keys = pd.concat([r[0] for r in results], ignore_index=True)
    removed, test_dups = clean_parts.clean_decisions(keys)
    del keys
    jobs = [(tag, str(scratch), {k: v[(v >= part.start) & (v < part.start + part.rows)]
                                 for k, v in removed.items()})
            for tag, part in zip(tags, parts, strict=True)]
    run_map(_clean_split, jobs, p.backend)
    rows = p.backend.partition_rows
    n_kept = tp.concat_parts([scratch / f"kept-{t}.parquet" for t in tags],
                             project.path(p.paths.clean), rows)
    qparts = [scratch / f"q-{name.replace('/', '-')}-{t}.parquet"
              for name in QUARANTINE_ORDER for t in tags]
    tp.concat_parts(qparts, project.path(p.paths.quarantine) / "clean.parquet", rows)
    reasons = quarantine_reasons(qparts)
    report = _report(sum(r[2] for r in results), pd.RangeIndex(n_kept), reasons)
    report["test_duplicates_kept"] = test_dups
    report["redaction"] = tp.merge_reports([r[1] for r in results])
    shutil.rmtree(scratch)
    return report
