"""What a label value is, wherever labels are read (ingest, feedback, the labeling page, the
API): missing or not, its one canonical spelling (numbers as numbers: "1.00" is "1"), the class
a person's label maps onto, case variants merged, multi-label evidence, and the train/test
label-set check. One rule for every path, kept apart from the label stage's own steps
(tasks/label/) so the stages that only read labels run, and are fingerprinted for, this alone."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from textloop.core.errors import UserError
from textloop.core.text import normalize_text

_DECIMAL = re.compile(r"(-?(?:0|[1-9]\d*))(?:\.(\d+))?")  # "1", "-2", "4.50"; "01" is not
MULTI_SEPARATORS = "|;,"


def is_missing(value: object) -> bool:
    """None, NaN, NA, NaT: a label or text that is not there (never called on containers)."""
    return value is None or value is pd.NA or value is pd.NaT or (
        isinstance(value, (float, np.floating)) and math.isnan(value))


def canonical_label(value: object) -> str | None:
    """One spelling per label: a number by its value (1, 1.0, "1.00" -> "1"; 4.5, "4.50" ->
    "4.5"; "01" stays, a leading zero is not a number), text normalised as texts are (NFC, invisible characters
    dropped, whitespace collapsed and trimmed); empty -> None. Scalars only: the reader checks."""
    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = normalize_text(str(value), strip_html=False)
    m = _DECIMAL.fullmatch(text)
    return _decimal_spelling(m[1], m[2] or "") if m else (text or None)


def known_label(value: object, known: Sequence[str]) -> str | None:
    """A label given by a person (a feedback file, /feedback, a labeling answer) mapped onto the
    model's classes: its canonical spelling when that is a class, else the one class equal to it
    ignoring case ("Technical" -> "technical"); None when it names no class (empty, unknown, or
    two classes differing only in case). The one rule every path a label enters by uses."""
    canon = canonical_label(value)
    if canon is None or canon in known:
        return canon
    same_case = [k for k in known if k.casefold() == canon.casefold()]
    return same_case[0] if len(same_case) == 1 else None


def _decimal_spelling(whole: str, fraction: str) -> str:
    """A plain decimal by its value: trailing fraction zeros dropped, an integer without a
    point ("4.50" -> "4.5", "1.00" -> "1", "-0.0" -> "0"), as a float label is spelled."""
    fraction = fraction.rstrip("0")
    if not fraction:
        return str(int(whole))
    return f"{whole}.{fraction}"


def canonicalize_labels(labels: pd.Series) -> tuple[pd.Series, dict]:
    """Each label in its canonical spelling (`canonical_label`), plus a report of every rewrite
    (nothing is altered silently): rows rewritten and the distinct (from, to) pairs."""
    values = labels.to_numpy(dtype=object)  # plain objects: fast to iterate, any backing dtype
    missing = pd.isna(values)  # elementwise on an object array
    cache: dict[tuple[type, object], str | None] = {}  # few distinct labels, many rows
    for v, m in zip(values, missing):
        if not m and (type(v), v) not in cache:
            cache[type(v), v] = canonical_label(v)
    canon = pd.Series([None if m else cache[type(v), v] for v, m in zip(values, missing)],
                      index=labels.index, dtype=object)
    raw = pd.Series([None if m else str(v) for v, m in zip(values, missing)], index=labels.index,
                    dtype=object)
    changed = raw.notna() & (raw != canon)
    pairs = sorted({(str(a), str(b)) for a, b in zip(raw[changed], canon[changed])})
    return canon, {"rows": int(changed.sum()),
                   "spellings": [{"from": a, "to": b} for a, b in pairs[:100]]}


def merge_label_case(labels: pd.Series, enabled: bool = True) -> tuple[pd.Series, dict]:
    """label.merge_case: spellings that differ only in case are merged onto the most frequent one
    (ties: the one seen first). The report lists every merge and the resulting classes."""
    merges: list[dict] = []
    if enabled:
        labels, merges = _merge_case(labels)
    classes = labels.dropna().value_counts().sort_index()
    return labels, {"merge_case": enabled, "merges": merges,
                    "rows_merged": sum(sum(m["from"].values()) for m in merges),
                    "classes": [{"label": str(k), "rows": int(v)} for k, v in classes.items()]}


def _merge_case(canon: pd.Series) -> tuple[pd.Series, list[dict]]:
    """Map spellings equal up to case onto the most frequent one; list each merge."""
    counts = canon.dropna().value_counts()
    first = {v: i for i, v in enumerate(canon.dropna().drop_duplicates())}
    groups: dict[str, list[str]] = {}
    for spelling in sorted(counts.index, key=lambda s: (-counts[s], first[s])):
        groups.setdefault(spelling.casefold(), []).append(spelling)
    mapping, merges = {}, []
    for winner, *others in groups.values():
        if others:
            mapping.update({o: winner for o in others})
            merges.append({"into": winner, "rows_kept": int(counts[winner]),
                           "from": {o: int(counts[o]) for o in others}})
    merged = canon.map(lambda v: mapping.get(v, v)).astype(object)
    return merged.where(merged.notna(), None), merges


def multi_label_evidence(labels: pd.Series) -> str | None:
    """Why a label column looks multi-label (lists, or one separator in most labels), or None."""
    values = labels.to_numpy(dtype=object)
    for row, v in enumerate(values, start=1):
        if isinstance(v, (list, tuple, np.ndarray)):
            return f"row {row} holds a list {list(v)!r}"
    counts = Counter(str(v) for v in values[~pd.isna(values)])  # in order of first sight
    total = sum(counts.values())
    for sep in MULTI_SEPARATORS:
        hits = [t for t in counts if sep in t.strip(sep + " ") and _label_like(t.split(sep))]
        n = sum(counts[t] for t in hits)
        if total and n > total / 2:
            return f"{n} of {total} labels contain {sep!r} (e.g. {hits[0]!r})"
    return None


def _label_like(parts: list[str]) -> bool:
    """Parts short enough to be labels (1-3 words each), not sentences of a text column."""
    return all(0 < len(part.split()) <= 3 for part in parts)


def check_label_sets(train: pd.Series, test: pd.Series, train_name: str, test_name: str) -> None:
    """A test set is scored against the training classes: its labels must be exactly those
    (none unseen, none missing). Raises UserError naming the labels on each side."""
    have, want = set(test.dropna()), set(train.dropna())
    if not have or have == want:
        return
    unseen, missing = sorted(have - want), sorted(want - have)
    what = (f"test labels not in the training data: {', '.join(unseen)}" if unseen
            else f"the test set has no rows of class {', '.join(missing)}")
    raise UserError(f"{test_name}: {what} (training labels from {train_name}: "
                    f"{', '.join(sorted(want))}; test labels: {', '.join(sorted(have))})")
