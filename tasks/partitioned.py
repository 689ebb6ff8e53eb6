"""Big corpora in partitions: the per-partition work and the global decisions of ingest, clean,
label and shard, with memory bounded by the partition size (backend.partition_rows).

Every per-row rule is the in-memory path's own function, called on each partition (ingest's
`table_rows`, tombstones, the text limit, clean's `normalize_rows`, label's `split_trusted`,
shard's `_hashed_split`). What needs every row (exact dedupe, feedback overrides, label conflicts,
label case merging, unique ids, near-duplicate groups) runs on compact per-row keys gathered from
all partitions: a 128-bit blake2b of the normalised text (hex) instead of the text, a 64-bit hash
per MinHash LSH band instead of the signature. The dedupe/conflict/override rules themselves are
clean.py's functions, called on a frame whose `text` column holds those keys, so the rows kept
and quarantined are the in-memory path's (up to a 2^-128 / 2^-64 hash collision).

Partitions are Parquet row groups: a partition's rows are read by the task that handles it, its
outputs written as part files in a scratch folder and joined in order at the end
(`concat_parts`). The orchestration (which task runs where, on Dask) is
textloop/pipeline/partitions.py.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_SAME = {"max_chars"}  # report numbers that are settings, not counts: kept, not summed
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finalizer


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


def text_keys(texts: Sequence[Any]) -> list[str]:
    """The compact stand-in for a text in the global steps: 128-bit blake2b, hex (32 chars)."""
    return [hashlib.blake2b(str(t).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
            for t in texts]


# --- ingest ------------------------------------------------------------------------------


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


def label_mapping(labels: pd.Series, merge_case: bool) -> tuple[dict[str, str], dict]:
    """label.merge_case over every row's label (a compact column): the spelling each label
    becomes (only those that change) and ingest's `labels` report (tasks.label.merge_label_case,
    the one rule)."""
    from tasks.label import merge_label_case

    merged, report = merge_label_case(labels, merge_case)
    changed = labels.notna() & (labels.astype(object) != merged.astype(object))
    pairs = pd.DataFrame({"a": labels[changed], "b": merged[changed]}).drop_duplicates()
    return dict(zip(pairs["a"], pairs["b"])), report


# --- clean -------------------------------------------------------------------------------


def compact_rows(df: pd.DataFrame) -> pd.DataFrame:
    """What the global clean rules read of each row: position (as row_id: ids are unique),
    role, source, label, and the text's key."""
    return pd.DataFrame({"row_id": df.index.to_numpy(dtype=np.int64),
                         "role": df["role"].astype(object).to_numpy(),
                         "source": df["source"].astype(object).to_numpy(),
                         "label": df["label"].astype(object).to_numpy(),
                         "text": text_keys(df["text"].tolist())})


def clean_decisions(compact: pd.DataFrame) -> tuple[dict[str, np.ndarray], int]:
    """clean.py's global rules on the compact rows of every partition (after the per-row
    empty/short step): the positions each rule quarantines, in the order the in-memory path
    lists them (superseded, conflicts, duplicates: labeled copies first), and how many test rows
    repeat a text (kept: the test set is scored as given)."""
    from tasks.clean import _apply_feedback_overrides, _collapse_duplicates, _quarantine_conflicts

    compact = compact.set_index(pd.RangeIndex(len(compact)))
    fixed = (compact["role"] == "test").to_numpy()
    data, test = compact[~fixed], compact[fixed]
    data, superseded = _apply_feedback_overrides(data)
    data, conflicts = _quarantine_conflicts(data)
    data, dups = _collapse_duplicates(data)
    labeled = dups["label"].notna().to_numpy()
    out = {"superseded_by_feedback": superseded["row_id"].to_numpy(dtype=np.int64),
           "conflicting_labels": conflicts["row_id"].to_numpy(dtype=np.int64),
           "duplicate_text/labeled": dups["row_id"].to_numpy(dtype=np.int64)[labeled],
           "duplicate_text/unlabeled": dups["row_id"].to_numpy(dtype=np.int64)[~labeled]}
    return out, int(test["text"].duplicated().sum())


def clean_rows(df: pd.DataFrame, removed: dict[str, np.ndarray]
               ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One normalised partition split by the global decisions: the kept rows (in order) and
    the quarantined ones per decision (clean.quarantine_rows, reason = the decision's name
    before '/')."""
    from tasks.clean import quarantine_rows

    out, gone = {}, np.zeros(len(df), dtype=bool)
    pos = df.index.to_numpy()
    for name, positions in removed.items():
        hit = np.isin(pos, positions)
        gone |= hit
        out[name] = quarantine_rows(df[hit], name.split("/")[0], "clean")
    return df[~gone], out


# --- shard -------------------------------------------------------------------------------


def _mix(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One step of an order-sensitive 64-bit hash: splitmix64's finalizer over h ^ v."""
    h = h ^ v.astype(np.uint64)
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def band_keys(texts: Sequence[str], threshold: float, shingle_words: int, num_perm: int,
              seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per text with a shingle: its MinHash LSH band keys (uint64 [rows, bands], a 64-bit hash of
    the band's values), with tasks.neardup's own shingles, signatures and datasketch's (bands,
    rows) for threshold/num_perm. Returns (keys, the local index of each row that has them)."""
    from datasketch.lsh import _optimal_param

    from tasks.neardup import all_shingle_hashes, minhash_signatures

    hashes, counts = all_shingle_hashes(texts, shingle_words)
    sigs = minhash_signatures(hashes, counts, num_perm, seed)
    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(len(sigs), b + 1, dtype=np.uint64)
            for r in range(rows):
                h = _mix(h, sigs[:, b * rows + r])
            keys[:, b] = h
    return keys, np.flatnonzero(counts > 0)


def groups_from_bands(keys: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """Near-duplicate group id per row (int64 [n], the smallest position of its group): rows
    sharing any band key are linked, links closed transitively (tasks.neardup's rule, on band
    keys gathered from every partition instead of signatures)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = []
    for b in range(keys.shape[1]):
        _, first, bucket = np.unique(keys[:, b], return_index=True, return_inverse=True)
        head = first[bucket.ravel()]
        linked = head != np.arange(len(head))
        edges.append(np.column_stack([np.flatnonzero(linked), head[linked]]))
    e = positions[np.concatenate(edges)] if edges else np.zeros((0, 2), dtype=np.int64)
    graph = coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, label, np.arange(n, dtype=np.int64))
    return smallest[label]


def min_texts(df: pd.DataFrame, groups: np.ndarray, best: dict[int, str]) -> None:
    """Update `best` (group -> smallest text so far) with a partition's rows of groups that
    have 2+ members (`groups`: the partition's group ids, -1 for a row alone)."""
    for g, t in zip(groups.tolist(), df["text"].tolist(), strict=True):
        if g >= 0 and (g not in best or t < best[g]):
            best[g] = t


@dataclass
class ShardGlobals:
    """What a partition's split needs from every row: group per position, the canonical
    (smallest) text of each group of 2+, whether an explicit test set exists, the explicit test
    rows' text keys and groups."""

    groups: np.ndarray
    canonical: dict[int, str]
    explicit_any: bool
    test_keys: set[str]
    test_groups: np.ndarray
    near_enabled: bool


def assign_partition(df: pd.DataFrame, cfg: Any, g: ShardGlobals
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """tasks.shard.assign_splits on one partition, with the groups and test-set facts of the
    whole corpus: (rows with split, exact_split, dup_group; rows overlapping the test set;
    rows near-duplicate of a test row), each in row order."""
    from tasks.clean import quarantine_rows
    from tasks.shard import MACHINE_ORIGINS, _hashed_split, label_origins

    df = df.assign(label_origin=label_origins(df))
    texts = df["text"].tolist()
    groups = g.groups[df.index.to_numpy()]
    keys = [g.canonical.get(x, t) for x, t in zip(groups.tolist(), texts, strict=True)]
    explicit = (df["role"] == "test").to_numpy()
    split = _hashed_split(keys, cfg, g.explicit_any)
    exact = _hashed_split(texts, cfg, g.explicit_any) if g.near_enabled else split
    split, exact = np.where(explicit, "test", split), np.where(explicit, "test", exact)
    machine = df["label_origin"].isin(MACHINE_ORIGINS).to_numpy()
    out = df.assign(split=np.where(machine, "train", split),
                    exact_split=np.where(machine, "train", exact), dup_group=groups)
    in_test = [k in g.test_keys for k in text_keys(texts)] if g.test_keys else [False] * len(df)
    leaked = (~explicit) & np.array(in_test, dtype=bool)
    near = (~explicit) & (~leaked) & np.isin(groups, g.test_groups)
    drop = ["split", "exact_split", "dup_group"]
    return (out[~(leaked | near)],
            quarantine_rows(out[leaked], "overlaps_test_set", "shard").drop(columns=drop),
            quarantine_rows(out[near], "near_duplicate_of_test", "shard").drop(columns=drop))


def count_summary(counter: Counter) -> dict[str, int]:
    """A Counter as a plain dict of ints (reports)."""
    return {str(k): int(v) for k, v in counter.items()}
