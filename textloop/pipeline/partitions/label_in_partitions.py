"""The label stage in partitions (textloop.pipeline.partitions)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from textloop.core.config import Params
from textloop.core.layout import Project
from textloop.pipeline.partitions import partition_files as tp
from textloop.pipeline.partitions import run_map, scratch_dir, use_partitions

log = logging.getLogger(__name__)


def wanted(project: Project) -> bool:
    """Label runs partitioned when use_partitions says so on clean.parquet's rows and the
    enabled steps allow it (label_supported)."""
    p = project.params()
    if not label_supported(p):
        if p.backend.partitioned is True:
            log.warning("label: issues/functions/pseudo need the whole frame: run in memory")
        return False
    return use_partitions(p.backend, tp.parquet_rows(project.path(p.paths.clean)))


def label_supported(p: Params) -> bool:
    """The partitioned label stage covers the trusted/queue split; label-error detection, weak
    labels and pseudo-labels fit models on the whole frame (they run in memory)."""
    return p.label.issues == "ignore" and p.label.functions is None and not p.label.pseudo.enabled


def _label_part(job: tuple) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Dask task: tasks.label.split_trusted on one clean partition; writes its labeled rows and
    its queue (CSV, with header); returns compact label/origin and reason columns."""
    from tasks.label import split_trusted
    from tasks.shard import label_origins

    part, scratch, cfg = job
    df = tp.read_partition(part).reset_index(drop=True)
    trusted, queue, rep = split_trusted(df, cfg)
    labeled = trusted.assign(label_origin=label_origins(trusted))
    tag = f"{part.start:012d}"
    tp.write_part(labeled, Path(scratch) / f"labeled-{tag}.parquet")
    queue.assign(suggested_label="").to_csv(Path(scratch) / f"queue-{tag}.csv", index=False)
    return (labeled[["label", "label_origin"]], queue[["reason"]], rep["rows_missing_confidence"],
            len(df))



def run(project: Project) -> tuple[dict, Any]:
    """The label stage in partitions (label_supported): labeled.parquet, the queue CSV (the
    same bytes), the empty quarantine/issues/weak tables and the same report. Returns the report
    and the stage's empty outputs (tasks.label's and textloop.pipeline.label_steps's own)."""
    from tasks.label import _report, split_trusted
    from textloop.pipeline.label_steps import LabelOutputs, extend, final_report

    p = project.params()
    scratch = scratch_dir(project, "label")
    parts = tp.plan(project.path(p.paths.clean), p.backend.partition_rows)
    results = run_map(_label_part, [(part, str(scratch), p.label) for part in parts], p.backend)
    tags = [f"{part.start:012d}" for part in parts]
    tp.concat_parts([scratch / f"labeled-{t}.parquet" for t in tags],
                    project.path(p.paths.labeled), p.backend.partition_rows)
    _join_csv([scratch / f"queue-{t}.csv" for t in tags], project.path(p.paths.label_queue))
    trusted = pd.concat([r[0] for r in results], ignore_index=True)
    queue = pd.concat([r[1] for r in results], ignore_index=True)
    n = sum(r[3] for r in results)
    empty_clean = tp.read_partition(parts[0]).iloc[:0]
    empty = extend(project, p, empty_clean, *split_trusted(empty_clean, p.label))
    rep = _report(pd.RangeIndex(n), trusted, queue, sum(r[2] for r in results), p.label)
    out = LabelOutputs(trusted, queue, empty.quarantined, empty.issues, empty.weak, dict(rep))
    shutil.rmtree(scratch)
    return final_report(out, n), empty


def _join_csv(parts: Sequence[Path], dest: Path) -> None:
    """CSV part files (each with the header line) joined into one file with one header."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for i, part in enumerate(parts):
            with open(part, "rb") as f:
                header = f.readline()
                if i == 0:
                    out.write(header)
                shutil.copyfileobj(f, out)
