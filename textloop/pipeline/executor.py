"""The executor: runs a stage's plan (textloop.core.frame_plan, declared once in tasks/) over one
frame, or over partitions of a Parquet file with Dask for corpora that do not fit in memory
(textloop.yaml: backend.partitioned / partition_rows / partition_above / dask_address / dask_scheduler).
Both give the same outputs: the same rows in the same order, so shards and the label queue are the
same bytes and the single Parquet files read back as the same frames (row groups of
partition_rows when partitioned).

Partitioned: the input's row groups are joined into partitions of about partition_rows rows, a
Dask DataFrame over them (`dask.dataframe.from_map`, each partition indexed by row position);
each partition's scan and apply run as Dask tasks (a local scheduler, `dask_scheduler`, or the
distributed scheduler at `dask_address` whose workers see the project folder). A partition's rows
and output parts go to part files in a scratch folder (under paths.state, removed after); only
compact facts travel back; the plan's decide and finish run once, in this process; the outputs
are the part files joined in order.

Entry points: run_plan (a stage whose input is a Parquet file: clean, label, shard), run_frames
(frames the stage reads itself, each one partition: ingest's sources), stream_frames (a
per-frame function over a stream of chunks in this process: batch scoring with a model in
memory)."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from textloop.core.config import BackendConfig
from textloop.core.frame_plan import FramePlan, Step, run_frame
from textloop.core.layout import Project

log = logging.getLogger(__name__)


def use_partitions(cfg: BackendConfig, rows: int | None) -> bool:
    """The one switch: backend.partitioned true/false, or auto = more than partition_above rows
    (rows None: unknown without reading the whole input, so not partitioned)."""
    if cfg.partitioned in (True, False):
        return bool(cfg.partitioned)
    return rows is not None and rows > cfg.partition_above


@dataclass(frozen=True)
class Partition:
    """Rows `start`..`start + rows` of a Parquet file: its row groups `groups`."""

    path: str
    groups: tuple[int, ...]
    start: int
    rows: int


def partition_plan(path: Path, rows: int) -> list[Partition]:
    """Consecutive row groups of `path` joined into partitions of about `rows` rows (a larger
    row group is one partition: our writers use row groups of backend.partition_rows)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    out: list[Partition] = []
    groups: list[int] = []
    start = n = 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        n += meta.row_group(g).num_rows
        if n >= rows:
            out.append(Partition(str(path), tuple(groups), start, n))
            start, groups, n = start + n, [], 0
    if groups or not out:
        out.append(Partition(str(path), tuple(groups), start, n))
    return out


def parquet_rows(path: Path) -> int:
    """Rows of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def to_frame(table: Any) -> pd.DataFrame:
    """An Arrow table as pandas exactly as `pd.read_parquet` converts it (same dtypes)."""
    from pandas.io._util import arrow_table_to_pandas

    return arrow_table_to_pandas(table)


def read_partition(part: Partition) -> pd.DataFrame:
    """A partition's rows, indexed by their position in the file."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(part.path)
    table = f.read_row_groups(list(part.groups)) if part.groups else f.schema_arrow.empty_table()
    df = to_frame(table)
    df.index = pd.RangeIndex(part.start, part.start + len(df))
    return df


def write_part(df: pd.DataFrame, path: Path) -> None:
    """One partition's output rows as a part file (pandas' own Arrow conversion)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)


def concat_parts(parts: Sequence[Path], dest: Path, row_group_rows: int) -> int:
    """Join part files, in order, into one Parquet file with row groups of `row_group_rows`,
    holding one part at a time. Column types are unified over the parts (a column that is all
    null in one part takes the others' type), so the file reads back as the frame the in-memory
    path writes. Returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(p) for p in parts]
    schema = pa.unify_schemas(schemas, promote_options="permissive").remove_metadata()
    dest.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(dest, schema) as writer:
        for p in parts:
            table = pq.read_table(p).replace_schema_metadata(None).cast(schema)
            writer.write_table(table, row_group_size=row_group_rows)
            rows += table.num_rows
        if not rows:
            writer.write_table(schema.empty_table())
    return rows


def scratch_dir(project: Project, stage: str) -> Path:
    """An empty scratch folder for a stage's part files (under paths.state, removed after)."""
    path = project.state / "partitions" / stage
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --- where a plan's outputs go ---------------------------------------------------------------

@dataclass(frozen=True)
class ParquetOut:
    """An output written as one Parquet file."""

    path: Path


@dataclass(frozen=True)
class CsvOut:
    """An output written as one CSV file (header, no index)."""

    path: Path


@dataclass(frozen=True)
class StreamOut:
    """An output handed, frame by frame in order, to the stage's own writer (e.g. shard files)."""

    write: Callable[[Iterator[pd.DataFrame]], None]


Sink = ParquetOut | CsvOut | StreamOut


def _write_whole(df: pd.DataFrame, sink: Sink) -> None:
    """One frame's output written."""
    if isinstance(sink, StreamOut):
        return sink.write(iter([df]))
    sink.path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(sink, CsvOut):
        df.to_csv(sink.path, index=False)
    else:
        df.to_parquet(sink.path, index=False)


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


def _write_parts(files: Sequence[Path], sink: Sink, rows: int) -> None:
    """An output's part files (in order) written to its sink."""
    if isinstance(sink, StreamOut):
        sink.write(pd.read_parquet(f) for f in files)
    elif isinstance(sink, CsvOut):
        _join_csv(files, sink.path)
    else:
        concat_parts(files, sink.path, rows)


# --- a per-frame function over a stream of frames ------------------------------------------

def stream_frames(frames: Iterator[pd.DataFrame], fn: Callable[[pd.DataFrame], tuple[pd.DataFrame, Any]],
                  dest: Path | None, project: Project, stage: str) -> list[Any]:
    """fn on each frame in order, in this process (for work that holds a model in memory), each
    frame's output appended to `dest` (a table file; None: JSONL on stdout; Parquet: part files
    joined at the end, row groups of backend.partition_rows). Returns every frame's facts."""
    from textloop.core.tables import FORMATS, TableAppender

    parquet = dest is not None and FORMATS.get(dest.suffix.lower()) == "parquet"
    facts, parts = [], []
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(_scratch(project, stage)) if parquet else None
        writer = None if parquet else TableAppender(dest)
        for df in frames:
            out, got = fn(df)
            facts.append(got)
            if scratch is None:
                writer.write(out)
            else:
                parts.append(scratch / f"out-{len(parts):06d}.parquet")
                write_part(out, parts[-1])
        if scratch is not None:
            concat_parts(parts, dest, project.params().backend.partition_rows)
    return facts


# --- running a plan --------------------------------------------------------------------------

def run_plan(plan: FramePlan, cfg: Any, source: Path, sinks: dict[str, Sink],
             project: Project, stage: str) -> dict:
    """The stage's plan over `source` (a Parquet file): in partitions when use_partitions says
    so on its rows, else over the whole frame; every output in `sinks` written (outputs without
    a sink only feed the report). Returns the plan's report."""
    p = project.params()
    if not use_partitions(p.backend, parquet_rows(source)):
        return _run_whole(plan, cfg, pd.read_parquet(source), sinks)
    with _scratch(project, stage) as scratch:
        return _run_partitioned(plan, cfg, partition_plan(source, p.backend.partition_rows),
                                sinks, scratch, p.backend)


def run_frames(plan: FramePlan, cfg: Any, frames: Iterator[pd.DataFrame], sinks: dict[str, Sink],
               project: Project, stage: str, partitioned: bool) -> dict:
    """The plan over frames a stage reads itself (ingest's sources): each frame one partition
    (saved as a part file as it arrives), or all of them joined as one frame."""
    if not partitioned:
        return _run_whole(plan, cfg, pd.concat(list(frames), ignore_index=True), sinks)
    with _scratch(project, stage) as scratch:
        parts, start = [], 0
        for i, df in enumerate(frames):
            path = scratch / f"input-{i:06d}.parquet"
            write_part(df, path)
            parts.append(Partition(str(path), tuple(range(_row_groups(path))), start, len(df)))
            start += len(df)
        return _run_partitioned(plan, cfg, parts, sinks, scratch, project.params().backend)


def _row_groups(path: Path) -> int:
    """How many row groups a Parquet file has."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_row_groups


def _run_whole(plan: FramePlan, cfg: Any, df: pd.DataFrame, sinks: dict[str, Sink]) -> dict:
    """The plan on one frame (run_frame), its outputs written."""
    outputs, report = run_frame(plan, df, cfg)
    for name, sink in sinks.items():
        _write_whole(outputs[name], sink)
    return report


@contextlib.contextmanager
def _scratch(project: Project, stage: str) -> Iterator[Path]:
    """The stage's scratch folder, removed after; partitions keep pandas' own dtypes (Dask would
    turn object columns into strings)."""
    import dask

    path = scratch_dir(project, stage)
    try:
        with dask.config.set({"dataframe.convert-string": False}):
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_partitioned(plan: FramePlan, cfg: Any, parts: list[Partition], sinks: dict[str, Sink],
                     scratch: Path, backend: BackendConfig) -> dict:
    """The plan over `parts` on Dask (module docstring)."""
    import dask.dataframe as dd

    frames = dd.from_map(read_partition, parts, meta=read_partition(
        Partition(parts[0].path, (), 0, 0)), enforce_metadata=False).to_delayed()
    csv = {p for name, sink in sinks.items() if isinstance(sink, CsvOut) for p in plan.outputs[name]}
    job = _Job(plan, cfg, str(scratch), frozenset(csv))
    scanned = _compute([(job.scan, f, i) for i, f in enumerate(frames)], backend) \
        if plan.scan else [(None, {}, False)] * len(parts)
    carried = [job.carry_file(i) if s[2] else f for i, (s, f) in enumerate(zip(scanned, frames,
                                                                               strict=True))]

    def again(i: int) -> pd.DataFrame:
        """Partition i's rows as apply will see them (decide's second look)."""
        return _read_carry(job.carry_file(i)) if scanned[i][2] else read_partition(parts[i])

    decision = plan.decide([s[0] for s in scanned], cfg, again) if plan.decide else None
    applied = _compute([(job.apply, c, i, decision) for i, c in enumerate(carried)], backend)
    compact = {name: _joined_compact(plan, name, [s[1] for s in scanned], [a[1] for a in applied])
               for name in plan.outputs}
    report = plan.finish([s[0] for s in scanned], [a[0] for a in applied], decision, compact, cfg)
    for name, sink in sinks.items():
        files = [job.part_file(part, i) for part in plan.outputs[name] for i in range(len(parts))]
        _write_parts(files, sink, backend.partition_rows)
    return report


def _compute(calls: Sequence[tuple], backend: BackendConfig) -> list[Any]:
    """fn(*args) for every call as Dask tasks, results in call order: the scheduler at
    backend.dask_address, else the local `dask_scheduler`."""
    import dask

    tasks = [dask.delayed(fn, pure=False)(*args) for fn, *args in calls]
    if backend.dask_address:
        from distributed import Client

        with Client(backend.dask_address):
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks, scheduler=backend.dask_scheduler))


def _read_carry(path: Path) -> pd.DataFrame:
    """A partition's carried rows, with their positions as the index."""
    return pd.read_parquet(path)


def _joined_compact(plan: FramePlan, output: str, scanned: Sequence[dict],
                    applied: Sequence[dict]) -> pd.DataFrame:
    """An output's compact columns over every partition, in the output's order (part by part,
    each over the partitions in order)."""
    frames = [got[part][output] for part in plan.outputs[output]
              for got in (scanned if any(part in s for s in scanned) else applied)]
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class _Job:
    """What a partition's Dask task needs: the plan, its settings, the scratch folder and which
    parts are written as CSV (outputs with a CsvOut sink)."""

    plan: FramePlan
    cfg: Any
    scratch: str
    csv_parts: frozenset[str]

    def part_file(self, part: str, i: int) -> Path:
        """The scratch file of partition i's part `part`."""
        ext = "csv" if part in self.csv_parts else "parquet"
        return Path(self.scratch) / f"part-{part.replace('/', '-')}-{i:06d}.{ext}"

    def _save(self, step: Step, i: int) -> dict[str, dict[str, pd.DataFrame]]:
        """A step's parts as part files; returns their compact columns by part and output."""
        compact: dict[str, dict[str, pd.DataFrame]] = {}
        for part, df in step.parts.items():
            path = self.part_file(part, i)
            if part in self.csv_parts:
                df.to_csv(path, index=False)
            else:
                write_part(df, path)
            compact[part] = {out: df[list(self.plan.compact[out])].reset_index(drop=True)
                             for out, names in self.plan.outputs.items() if part in names}
        return compact

    def carry_file(self, i: int) -> Path:
        """The scratch file of partition i's carried rows."""
        return Path(self.scratch) / f"carry-{i:06d}.parquet"

    def scan(self, df: pd.DataFrame, i: int) -> tuple[Any, dict, bool]:
        """Dask task: the plan's scan on partition i; the rows it carries (when they differ from
        the input) saved with their positions. Returns facts, compact columns, whether saved."""
        step = self.plan.scan(df, self.cfg)
        if step.carry is not None:
            step.carry.to_parquet(self.carry_file(i), index=True)
        return step.facts, self._save(step, i), step.carry is not None

    def apply(self, source: Any, i: int, decision: Any) -> tuple[Any, dict]:
        """Dask task: the plan's apply on partition i's carried rows (a scratch file or the
        input partition itself)."""
        df = _read_carry(source) if isinstance(source, Path) else source
        step = self.plan.apply(df, self.cfg, decision)
        return step.facts, self._save(step, i)
