"""Big corpora in partitions: the per-partition work and the global decisions of ingest, clean,
label and shard, with memory bounded by the partition size (backend.partition_rows).

This module: the partition plan and the Parquet part files, the executor's side (no stage rule:
a stage's global rules over partitions live in its own home, tasks/clean/clean_parts.py and
tasks/shard/shard_parts.py, so a stage's code fingerprint names only the rules it runs). Every per-row rule is the in-memory path's own function, called on each partition (ingest's
`table_rows`, tombstones, the text limit, clean's `normalize_rows`, label's `split_trusted`,
shard's `_hashed_split`). What needs every row (exact dedupe, feedback overrides, label conflicts,
label case merging, unique ids, near-duplicate groups) runs on compact per-row keys gathered from
all partitions: a 128-bit blake2b of the normalised text (hex) instead of the text, a 64-bit hash
per MinHash LSH band instead of the signature. The dedupe/conflict/override rules themselves are
tasks.clean's functions, called on a frame whose `text` column holds those keys
(textloop.core.text.text_keys), so the rows kept
and quarantined are the in-memory path's (up to a 2^-128 / 2^-64 hash collision).

Partitions are Parquet row groups: a partition's rows are read by the task that handles it, its
outputs written as part files in a scratch folder and joined in order at the end
(`concat_parts`). The orchestration (which task runs where, on Dask) is
textloop/pipeline/partitions/ (one module per stage).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

_SAME = {"max_chars"}  # report numbers that are settings, not counts: kept, not summed


@dataclass(frozen=True)
class Partition:
    """Rows `start`..`start + rows` of a Parquet file: its row groups `groups`."""

    path: str
    groups: tuple[int, ...]
    start: int
    rows: int


def plan(path: Path, rows: int) -> list[Partition]:
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


def file_digest(path: Path) -> str:
    """md5 of a file's bytes read in 1 MiB blocks: `tables.digest_bytes` without the whole file
    in memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def parquet_batches(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """A Parquet source in batches of about `rows` rows (one row group at a time in memory),
    converted as `pd.read_parquet` converts it."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    for batch in f.iter_batches(batch_size=rows):
        import pyarrow as pa

        yield to_frame(pa.Table.from_batches([batch]))


def merge_reports(reports: Sequence[dict]) -> dict:
    """Per-partition count reports summed: numbers add, dicts merge key by key, lists of
    examples are joined, other values (policy names) are the first partition's."""
    out: dict = {}
    for rep in reports:
        for k, v in rep.items():
            if k not in out:
                out[k] = v if not isinstance(v, dict) else merge_reports([v])
            elif (isinstance(v, bool) or not isinstance(v, (int, float, dict, list))
                  or k in _SAME):
                continue
            elif isinstance(v, dict):
                out[k] = merge_reports([out[k], v])
            elif isinstance(v, list):
                out[k] = out[k] + [x for x in v if x not in out[k]]
            elif k.startswith("longest"):
                out[k] = max(out[k], v)
            else:
                out[k] = out[k] + v
    return out

