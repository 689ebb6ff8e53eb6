"""Batch scoring (`textloop predict`) in partitions (textloop.pipeline.partitions)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.pipeline.partitions import partition_files as tp
from textloop.pipeline.partitions import scratch_dir


def parquet_input_rows(source: str, output: Path | None) -> int | None:
    """Rows of a `textloop predict` input when both it and the output are Parquet files (the
    partitioned scorer's case; use_partitions decides on them), else None (read whole)."""
    from textloop.core.tables import FORMATS

    if output is None or source == "-" or not Path(source).is_file():
        return None
    if {FORMATS.get(Path(x).suffix.lower()) for x in (source, output)} != {"parquet"}:
        return None
    return tp.parquet_rows(Path(source))


def predict_file(project: Project, source: Path, dest: Path, text_col: str, label_col: str,
                 predict: Callable[[list[str]], np.ndarray], classes: Sequence[str],
                 clean: dict[str, Any], version: str) -> tuple[dict, dict | None]:
    """Batch scoring in partitions: each batch of backend.partition_rows input rows through
    tasks.predict.run_predict (the one row rule), written as a part; the parts joined into
    `dest` (the frame the in-memory path writes). Returns the counts and the accuracy on input
    labels, summed over the batches. Raises UserError for a missing text column or a column
    collision, before any row is scored."""
    import pyarrow.parquet as pq

    from tasks.predict import accuracy_on_labels, check_no_collision, run_predict

    p = project.params()
    columns = pq.read_schema(source).names
    if text_col not in columns:
        raise UserError(f"{source}, column {text_col!r}: text column not found "
                        f"(columns are: {', '.join(map(str, columns))})")
    check_no_collision(columns, classes, str(source))
    scratch = scratch_dir(project, "predict")
    counts, accuracy, parts = [], [], []
    for df in tp.parquet_batches(source, p.backend.partition_rows):
        out, c = run_predict(df.reset_index(drop=True), text_col, classes, predict, p.text,
                             clean, version)
        counts.append(c)
        accuracy.append(accuracy_on_labels(out, label_col))
        parts.append(scratch / f"pred-{len(parts):05d}.parquet")
        tp.write_part(out, parts[-1])
    tp.concat_parts(parts, dest, p.backend.partition_rows)
    shutil.rmtree(scratch)
    return tp.merge_reports(counts), _accuracy(accuracy, label_col)


def _accuracy(parts: Sequence[dict | None], label_col: str) -> dict | None:
    """tasks.predict.accuracy_on_labels over the whole file from its per-batch results."""
    if not parts or parts[0] is None:
        return None
    rows = sum(a["rows"] for a in parts)
    if not rows:
        return {"label_col": label_col, "rows": 0, "accuracy": None}
    correct = sum(a.get("correct", 0) for a in parts)
    return {"label_col": label_col, "rows": rows, "correct": correct, "accuracy": correct / rows}

