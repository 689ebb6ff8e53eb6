"""Batch scoring (`textloop predict`) in partitions (textloop.pipeline.partitions)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textloop.core.errors import UserError
from textloop.core.frame_plan import merged_counts
from textloop.core.layout import Project
from textloop.core.tables import FORMATS, TableAppender, iter_table
from textloop.pipeline import executor as tp
from textloop.pipeline.executor import scratch_dir


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
    """A Parquet file scored into a Parquet file in partitions: predict_stream."""
    return predict_stream(project, source, dest, text_col, label_col, predict, classes, clean,
                          version)


def _accuracy(parts: Sequence[dict | None], label_col: str) -> dict | None:
    """tasks.predict.accuracy_on_labels over the whole file from its per-batch results."""
    if not parts or parts[0] is None:
        return None
    rows = sum(a["rows"] for a in parts)
    if not rows:
        return {"label_col": label_col, "rows": 0, "accuracy": None}
    correct = sum(a.get("correct", 0) for a in parts)
    return {"label_col": label_col, "rows": rows, "correct": correct, "accuracy": correct / rows}



def predict_stream(project: Project, source: Path, dest: Path | None, text_col: str,
                   label_col: str, predict: Callable[[list[str]], np.ndarray],
                   classes: Sequence[str], clean: dict[str, Any], version: str
                   ) -> tuple[dict, dict | None]:
    """Batch scoring of any table file with bounded memory: backend.partition_rows input rows
    at a time (core.tables.iter_table) through tasks.predict.run_predict, each chunk's output
    appended to `dest` (Parquet: part files joined at the end). CSV/TSV number columns are
    decided over the whole file first, so the output is the one the file read whole gives.
    Returns the counts and the accuracy on input labels. Raises UserError for a missing text
    column or a column collision, before any row is scored."""
    from tasks.predict import accuracy_on_labels, apply_kinds, run_predict, spelled_as_text

    p = project.params()
    rows, kinds = p.backend.partition_rows, None
    if spelled_as_text(source):
        kinds = _kinds(source, rows, text_col, classes)
    parquet_out = dest is not None and FORMATS.get(dest.suffix.lower()) == "parquet"
    scratch = scratch_dir(project, "predict") if parquet_out else None
    writer = None if parquet_out else TableAppender(dest)
    counts, accuracy, parts = [], [], []
    for df in _checked(iter_table(source, rows), source, text_col, classes):
        out, c = run_predict(df if kinds is None else apply_kinds(df, kinds), text_col, classes,
                             predict, p.text, clean, version)
        counts.append(c)
        accuracy.append(accuracy_on_labels(out, label_col))
        if scratch is None:
            writer.write(out)
        else:
            parts.append(scratch / f"pred-{len(parts):05d}.parquet")
            tp.write_part(out, parts[-1])
    if scratch is not None:
        tp.concat_parts(parts, dest, rows)
        shutil.rmtree(scratch)
    return merged_counts(counts), _accuracy(accuracy, label_col)


def _kinds(source: Path, rows: int, text_col: str, classes: Sequence[str]) -> dict[str, str]:
    """What every CSV/TSV column spells over the whole file (a first pass, chunk by chunk)."""
    from tasks.predict import column_kinds, merge_kinds

    kinds: dict[str, str] = {}
    for df in _checked(iter_table(source, rows), source, text_col, classes):
        kinds = merge_kinds(kinds, column_kinds(df, [text_col]))
    return kinds


def _checked(chunks: Iterator[Any], source: Path, text_col: str, classes: Sequence[str]
             ) -> Iterator[Any]:
    """The chunks, the first one checked for the text column and prediction-column clashes."""
    from tasks.predict import check_no_collision

    for i, df in enumerate(chunks):
        if i == 0:
            if text_col not in df.columns:
                raise UserError(f"{source}, column {text_col!r}: text column not found "
                                f"(columns are: {', '.join(map(str, df.columns))})")
            check_no_collision(df.columns, classes, str(source))
        yield df.reset_index(drop=True)


def check_input(source: Path, text_col: str) -> None:
    """Before the model loads: the file exists, its format is known and readable, and its
    first rows have the text column (a JSONL key first seen later is checked over the whole
    file when scoring starts). Raises UserError."""
    from textloop.core.tables import table_format

    if table_format(source) == "jsonl":
        if not source.is_file():
            raise UserError(f"{source}: file not found")
        return
    first = next(iter_table(source, 1))
    if text_col not in first.columns:
        raise UserError(f"{source}, column {text_col!r}: text column not found "
                        f"(columns are: {', '.join(map(str, first.columns))})")
