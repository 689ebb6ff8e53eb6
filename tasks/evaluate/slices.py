"""Test-set slices (evaluate.slices): text-length buckets and categorical columns (source,
origin, a metadata column kept from ingest such as aclImdb's rating). One rule assigns rows to
slices (slice_keys), used by evaluate's per-slice metrics and the deploy gate's slice check; one
rule says why a column is no slice key (slice_skip_reason); a slice with fewer than
evaluate.slices.min_rows test rows is neither stored nor shown."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluate.stats import coded_ci, encode, point_metrics
from textloop.core.config import SlicesConfig

MAX_VALUES = 50  # values per sliced column; rarer ones are pooled into "(other)"
MISSING = "(missing)"
# a column with at least this many distinct values per row is an identifier, not a group: on
# the default corpus `origin` (file:line) is unique per row and would make one slice per row
NEAR_UNIQUE = 0.5


def length_bucket(lengths: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """Bucket name per text length (characters): '<e0', 'e0-e1', ..., '>=eN'."""
    names = [f"<{edges[0]}", *(f"{a}-{b}" for a, b in itertools.pairwise(edges)), f">={edges[-1]}"]
    return np.array(names, dtype=object)[np.searchsorted(np.asarray(edges), lengths, side="right")]


def _column_values(col: pd.Series) -> np.ndarray:
    """A column's values as slice names (strings; missing -> '(missing)'; integral floats such as
    a rating read as 7.0 -> '7'); beyond MAX_VALUES distinct values the rarest are '(other)'."""
    vals = col.map(lambda v: MISSING if pd.isna(v) else
                   str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v))
    top = set(vals.value_counts().index[:MAX_VALUES])
    return np.where(vals.isin(top), vals, "(other)").astype(object)


def slice_skip_reason(frame: pd.DataFrame, col: str, cfg: SlicesConfig) -> str | None:
    """Why `col` is no slice key of these test rows (None: it is one): absent, empty, almost
    unique per row (an identifier such as a file:line origin), or no value reaching min_rows
    rows (every slice would be too small to show)."""
    if col not in frame:
        return "not a column of the test rows"
    values = frame[col].dropna()
    if values.empty:
        return "no values"
    distinct, rows = int(values.nunique()), len(frame)
    if rows > 1 and distinct >= NEAR_UNIQUE * rows:
        return f"almost unique per row ({distinct} distinct values in {rows} rows)"
    largest = int(frame[col].value_counts(dropna=False).iloc[0])
    if largest < cfg.min_rows:
        return f"no value has {cfg.min_rows} test rows (largest: {largest})"
    return None


def slice_keys(frame: pd.DataFrame, cfg: SlicesConfig
               ) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """Per slice dimension ('length' and each configured column that is a slice key), the
    slice value of each row (aligned with `frame`), and the configured columns skipped, each
    with its reason ({column, reason}; slice_skip_reason)."""
    keys: dict[str, np.ndarray] = {}
    skipped: list[dict[str, str]] = []
    if cfg.length_chars and "text" in frame:
        keys["length"] = length_bucket(frame["text"].str.len().to_numpy(), cfg.length_chars)
    for col in cfg.columns:
        reason = slice_skip_reason(frame, col, cfg)
        if reason is None:
            keys[col] = _column_values(frame[col])
        else:
            skipped.append({"column": col, "reason": reason})
    return keys, skipped


def slice_metrics(y_true: Sequence[str], y_pred: Sequence[str], keys: dict[str, np.ndarray],
                  samples: int, seed: int, min_rows: int) -> dict[str, dict[str, Any]]:
    """{dimension: {value: {rows, accuracy, f1_macro, ci: {accuracy|f1_macro: {low, high}}}}}:
    the headline metrics of each slice with at least min_rows rows, with bootstrap 95% CIs.
    Smaller slices are left out (too few rows to read anything into); a dimension left with
    none is left out too."""
    (t, p), k = encode(y_true, y_pred)
    out: dict[str, dict[str, Any]] = {}
    for dim, values in keys.items():
        table: dict[str, Any] = {}
        for value in sorted(set(values.tolist())):
            m = values == value
            if int(m.sum()) < min_rows:
                continue
            s = point_metrics(t[m], p[m], k)
            table[str(value)] = {
                "rows": int(m.sum()), "accuracy": s["accuracy"], "f1_macro": s["f1_macro"],
                "ci": coded_ci(t[m], p[m], k, samples, seed, ("accuracy", "f1_macro"))}
        if table:
            out[dim] = table
    return out


def slice_records(table: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The slice table as one record per slice (DVC plots read a list of records):
    {slice: 'DIM=VALUE', rows, accuracy, low, high, f1_macro}."""
    return [{"slice": f"{dim}={value}", "rows": row["rows"], "accuracy": row["accuracy"],
             "low": row["ci"].get("accuracy", {}).get("low"),
             "high": row["ci"].get("accuracy", {}).get("high"), "f1_macro": row["f1_macro"]}
            for dim, values in table.items() for value, row in values.items()]
