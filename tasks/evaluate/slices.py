"""Test-set slices (evaluate.slices): text-length buckets and categorical columns (source,
origin, a metadata column kept from ingest such as aclImdb's rating). One rule assigns rows to
slices (slice_keys), used by evaluate's per-slice metrics and the deploy gate's slice check."""

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


def slice_keys(frame: pd.DataFrame, cfg: SlicesConfig) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per slice dimension ('length' and each configured column), the slice value of each row
    (aligned with `frame`), and the configured columns the frame lacks or has no value in
    (skipped, reported)."""
    keys: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    if cfg.length_chars and "text" in frame:
        keys["length"] = length_bucket(frame["text"].str.len().to_numpy(), cfg.length_chars)
    for col in cfg.columns:
        if col not in frame or frame[col].isna().all():
            skipped.append(col)
        else:
            keys[col] = _column_values(frame[col])
    return keys, skipped


def slice_metrics(y_true: Sequence[str], y_pred: Sequence[str], keys: dict[str, np.ndarray],
                  samples: int, seed: int, min_rows: int) -> dict[str, dict[str, Any]]:
    """{dimension: {value: {rows, accuracy, f1_macro, ci: {accuracy|f1_macro: {low, high}},
    gated}}}: the headline metrics of each slice with bootstrap 95% CIs; `gated` when the slice
    has at least min_rows rows (the deploy gate only looks at those)."""
    (t, p), k = encode(y_true, y_pred)
    out: dict[str, dict[str, Any]] = {}
    for dim, values in keys.items():
        table: dict[str, Any] = {}
        for value in sorted(set(values.tolist())):
            m = values == value
            s = point_metrics(t[m], p[m], k)
            table[str(value)] = {
                "rows": int(m.sum()), "accuracy": s["accuracy"], "f1_macro": s["f1_macro"],
                "ci": coded_ci(t[m], p[m], k, samples, seed, ("accuracy", "f1_macro")),
                "gated": bool(m.sum() >= min_rows)}
        out[dim] = table
    return out
