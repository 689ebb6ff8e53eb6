"""Batch scoring (`textloop predict FILE`) with bounded memory: the input read in chunks of
backend.partition_rows rows (textloop.core.tables.iter_table), each chunk scored by
tasks.predict.run_predict (the one scoring rule, the same as for a whole frame) and appended to
the output by the executor (textloop.pipeline.executor.stream_frames); counts and accuracy over
the whole file from the chunks' (tasks.predict.accuracy_over)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textloop.core.errors import UserError
from textloop.core.frame_plan import merged_counts
from textloop.core.layout import Project
from textloop.core.tables import FORMATS, iter_table


def parquet_input_rows(source: str, output: Path | None) -> int | None:
    """Rows of a `textloop predict` input when both it and the output are Parquet files (read
    from the footer), else None."""
    from textloop.pipeline.executor import parquet_rows

    if output is None or source == "-" or not Path(source).is_file():
        return None
    if {FORMATS.get(Path(x).suffix.lower()) for x in (source, output)} != {"parquet"}:
        return None
    return parquet_rows(Path(source))


def predict_stream(project: Project, source: Path, dest: Path | None, text_col: str,
                   label_col: str, predict: Callable[[list[str]], np.ndarray],
                   classes: Sequence[str], clean: dict[str, Any], version: str
                   ) -> tuple[dict, dict | None]:
    """A table file scored into `dest` chunk by chunk (module docstring). CSV/TSV number columns
    are decided over the whole file first, so the output is the one the file read whole gives.
    Returns the counts and the accuracy on input labels. Raises UserError for a missing text
    column or a column collision, before any row is scored."""
    from tasks.predict import (
        accuracy_on_labels,
        accuracy_over,
        apply_kinds,
        run_predict,
        spelled_as_text,
    )
    from textloop.pipeline.executor import stream_frames

    p = project.params()
    rows = p.backend.partition_rows
    kinds = _kinds(source, rows, text_col, classes) if spelled_as_text(source) else None

    def score(df: Any) -> tuple[Any, tuple[dict, dict | None]]:
        out, counts = run_predict(df if kinds is None else apply_kinds(df, kinds), text_col,
                                  classes, predict, p.text, clean, version)
        return out, (counts, accuracy_on_labels(out, label_col))

    facts = stream_frames(_checked(iter_table(source, rows), source, text_col, classes), score,
                          dest, project, "predict")
    return merged_counts([f[0] for f in facts]), accuracy_over([f[1] for f in facts], label_col)


def predict_file(project: Project, source: Path, dest: Path, text_col: str, label_col: str,
                 predict: Callable[[list[str]], np.ndarray], classes: Sequence[str],
                 clean: dict[str, Any], version: str) -> tuple[dict, dict | None]:
    """A Parquet file scored into a Parquet file: predict_stream."""
    return predict_stream(project, source, dest, text_col, label_col, predict, classes, clean,
                          version)


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
    from tasks.predict import check_input_columns

    for i, df in enumerate(chunks):
        if i == 0:
            check_input_columns(df.columns, text_col, classes, str(source))
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
