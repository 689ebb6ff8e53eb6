"""Batch prediction over a user's table (`textloop predict`): which rows get a prediction, the
output columns, input types kept, and accuracy when the input already carries labels.

Prediction columns are always prefixed `pred_` (pred_label, pred_confidence, pred_proba_<class>,
pred_model_version, pred_reason), so they never overwrite or duplicate an input column (an
input that already has one of them is refused). Rows that get no prediction keep an empty
pred_label and say why in pred_reason: `empty_text` (blank, or empty after normalisation),
`not_text` (a number, list or object in the text column), `too_long` (text.overlong: refuse).
`truncated` marks a row predicted on its first text.max_chars characters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.config import TextConfig
from textloop.core.errors import UserError
from textloop.core.limits import apply_text_limit
from textloop.core.model import EMPTY_TEXT, empty_text

PREFIX = "pred_"
NO_PREDICTION = ("empty_text", "not_text", "too_long")


def output_columns(classes: Sequence[str]) -> list[str]:
    """The columns predict adds, in order."""
    return ([f"{PREFIX}label", f"{PREFIX}confidence"]
            + [f"{PREFIX}proba_{c}" for c in classes]
            + [f"{PREFIX}model_version", f"{PREFIX}reason"])


def check_no_collision(columns: Sequence[Any], classes: Sequence[str], source: str) -> None:
    """Raise UserError when the input already has a column predict would write."""
    taken = [c for c in output_columns(classes) if c in {str(x) for x in columns}]
    if taken:
        raise UserError(f"{source}, column {taken[0]!r}: the input already has a prediction "
                        f"column ({', '.join(taken)}); rename or drop it, predict writes "
                        f"{', '.join(output_columns(classes))}")


@dataclass(frozen=True)
class Plan:
    """Which rows to predict: `texts` (possibly truncated) at `rows`, and a reason per row."""

    rows: list[int]
    texts: list[str]
    reasons: list[str | None]
    limit_report: dict[str, Any]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def plan_rows(values: Sequence[Any], cfg: TextConfig, clean: dict[str, Any]) -> Plan:
    """Apply the length policy and the blank rule (the model's own normalisation) per row."""
    limited = apply_text_limit([v if isinstance(v, str) else "" for v in values], cfg)
    refused, cut = set(limited.refused), set(limited.truncated)
    reasons: list[str | None] = []
    for i, value in enumerate(values):
        if _is_missing(value):
            reasons.append(EMPTY_TEXT)
        elif not isinstance(value, str):
            reasons.append("not_text")
        elif i in refused:
            reasons.append("too_long")
        elif empty_text(limited.texts[i], clean):
            reasons.append(EMPTY_TEXT)
        else:
            reasons.append("truncated" if i in cut else None)
    rows = [i for i, r in enumerate(reasons) if r not in NO_PREDICTION]
    return Plan(rows, [limited.texts[i] for i in rows], reasons, limited.report())


def prediction_frame(n: int, plan: Plan, classes: Sequence[str], proba: np.ndarray,
                     version: str) -> pd.DataFrame:
    """n rows of pred_* columns: filled at plan.rows, empty (null) elsewhere."""
    cols = output_columns(classes)
    out = pd.DataFrame({c: pd.Series([None] * n, dtype=object) for c in cols[:2]})
    out[cols[1]] = np.nan
    for c in cols[2:-2]:
        out[c] = np.nan
    if plan.rows:
        proba = np.asarray(proba, dtype=float)
        out.loc[plan.rows, cols[0]] = [str(classes[j]) for j in proba.argmax(axis=1)]
        out.loc[plan.rows, cols[1]] = proba.max(axis=1)
        for j, c in enumerate(cols[2:-2]):
            out.loc[plan.rows, c] = proba[:, j]
    out[cols[-2]] = str(version)
    out[cols[-1]] = pd.Series(plan.reasons, dtype=object)
    return out


def run_predict(df: pd.DataFrame, text_col: str, classes: Sequence[str],
                predict: Callable[[list[str]], np.ndarray], cfg: TextConfig,
                clean: dict[str, Any], version: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The input rows unchanged plus the pred_* columns, and counts (rows, predicted, each
    reason, the length-policy report)."""
    plan = plan_rows(df[text_col].tolist(), cfg, clean)
    proba = predict(plan.texts) if plan.texts else np.zeros((0, len(classes)))
    preds = prediction_frame(len(df), plan, classes, proba, version)
    out = pd.concat([df.reset_index(drop=True), preds], axis=1)
    reasons = pd.Series(plan.reasons, dtype=object).value_counts().to_dict()
    return out, {"rows": len(df), "predicted": len(plan.rows), "reasons": reasons,
                 "text_limit": plan.limit_report}


def accuracy_on_labels(out: pd.DataFrame, label_col: str) -> dict[str, Any] | None:
    """Accuracy of pred_label against the input's label column (None when there is none).

    Counted on rows that have both a label and a prediction; labels compared as stripped
    strings."""
    if label_col not in out.columns:
        return None
    labels, preds = out[label_col], out[f"{PREFIX}label"]
    both = labels.map(lambda v: not _is_missing(v)) & preds.notna()
    if not both.any():
        return {"label_col": label_col, "rows": 0, "accuracy": None}
    truth = labels[both].astype(str).str.strip()
    hits = int((truth == preds[both].astype(str)).sum())
    return {"label_col": label_col, "rows": int(both.sum()), "correct": hits,
            "accuracy": hits / int(both.sum())}


def accuracy_over(parts: Sequence[dict[str, Any] | None], label_col: str) -> dict[str, Any] | None:
    """accuracy_on_labels over a whole file from its chunks' results (in order)."""
    if not parts or parts[0] is None:
        return None
    rows = sum(a["rows"] for a in parts)
    if not rows:
        return {"label_col": label_col, "rows": 0, "accuracy": None}
    correct = sum(a.get("correct", 0) for a in parts)
    return {"label_col": label_col, "rows": rows, "correct": correct, "accuracy": correct / rows}


def check_input_columns(columns: Sequence[Any], text_col: str, classes: Sequence[str],
                        source: str) -> None:
    """An input's columns hold the text column and none the prediction columns would clash
    with. Raises UserError naming the file and the column."""
    if text_col not in columns:
        raise UserError(f"{source}, column {text_col!r}: text column not found "
                        f"(columns are: {', '.join(map(str, columns))})")
    check_no_collision(columns, classes, source)


def _number(value: str) -> int | float | None:
    """The number a CSV cell spells exactly (written back, it gives the same text), else None."""
    try:
        as_int = int(value)
        return as_int if str(as_int) == value else None
    except ValueError:
        pass
    try:
        as_float = float(value)
    except ValueError:
        return None
    return as_float if math.isfinite(as_float) and repr(as_float) == value else None


def restore_types(df: pd.DataFrame, keep_text: Sequence[str], path: Path) -> pd.DataFrame:
    """CSV/TSV cells are read as strings; give back integer or float columns whose every cell
    spells a number exactly (so writing them back changes no character). Other formats keep
    their own types; `keep_text` columns stay strings."""
    if not spelled_as_text(path):
        return df
    return apply_kinds(df, column_kinds(df, keep_text))


def spelled_as_text(path: Path) -> bool:
    """Whether a file's cells are read as strings (CSV/TSV), so numbers are restored."""
    return path.suffix.lower() in (".csv", ".tsv", ".txt")


def column_kinds(df: pd.DataFrame, keep_text: Sequence[str]) -> dict[str, str]:
    """Per column what its present cells spell: 'int', 'float', 'text', or 'none' (no cell).
    Decided per chunk and merged (merge_kinds), the same as over the whole file."""
    kinds = {}
    for col in df.columns:
        cells = df[col].dropna()
        if col in keep_text or (not cells.empty and not all(isinstance(v, str) for v in cells)):
            kinds[col] = "text"
            continue
        nums = [_number(v) for v in cells]
        if not nums:
            kinds[col] = "none"
        elif all(isinstance(n, int) and -2**63 <= n < 2**63 for n in nums):
            kinds[col] = "int"
        elif all(isinstance(n, float) for n in nums):
            kinds[col] = "float"
        else:
            kinds[col] = "text"
    return kinds


def merge_kinds(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    """Kinds of two parts of one table: a column is numeric when every part with cells agrees."""
    out = dict(a)
    for col, kind in b.items():
        seen = out.get(col, "none")
        out[col] = kind if seen == "none" else seen if kind in ("none", seen) else "text"
    return out


def apply_kinds(df: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """The columns whose kind is int or float converted (Int64 with missing cells, float)."""
    out = df.copy()
    for col, kind in kinds.items():
        if col not in out.columns:
            continue
        if kind == "int":
            out[col] = pd.array([None if _is_missing(v) else int(v) for v in out[col]],
                                dtype="Int64")
        elif kind == "float":
            out[col] = pd.to_numeric(out[col])
    return out
