"""annotate: the rules of human labeling on the /label page, pure.

Which items two people label (`label.double_annotate_fraction`), what a set of answers to one
item means (wait for the second person, agreed, disagreement for review), and how much the
annotators agree (Cohen's kappa). Disagreements never reach training: a human has to settle
them first."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Literal

import pandas as pd

Outcome = Literal["waiting", "agreed", "disagreement"]


def is_double(item_id: str, fraction: float) -> bool:
    """Whether an item is shown to two annotators: a stable hash of its id below `fraction`
    (the same answer in every process and after a restart; ~fraction of items overall)."""
    if fraction <= 0:
        return False
    bucket = int(hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8], 16) / 0x1_0000_0000
    return bucket < fraction


def answers_needed(item_id: str, fraction: float) -> int:
    """1, or 2 for a double-annotated item."""
    return 2 if is_double(item_id, fraction) else 1


def outcome(labels: Sequence[str], needed: int) -> Outcome:
    """The state of one item from its answers' labels (one per annotator): fewer than needed
    -> waiting; all the same -> agreed (the label may train); else disagreement (review)."""
    if len(labels) < needed:
        return "waiting"
    return "agreed" if len(set(labels)) == 1 else "disagreement"


def agreement(pairs: pd.DataFrame) -> dict[str, float | int | None]:
    """Cohen's kappa (sklearn.metrics.cohen_kappa_score) between the first and the second
    answer of each double-annotated item. pairs: columns `first`, `second` (labels), one row per
    item with two answers. Returns items, raw agreement (0..1) and kappa (-1..1; None with no
    pair, or when kappa is undefined: both annotators always used one and the same label)."""
    from sklearn.metrics import cohen_kappa_score

    n = len(pairs)
    if n == 0:
        return {"items": 0, "observed": None, "kappa": None}
    first, second = pairs["first"].astype(str), pairs["second"].astype(str)
    observed = float((first.to_numpy() == second.to_numpy()).mean())
    one_label = len(set(first) | set(second)) < 2  # chance agreement 1: kappa undefined
    kappa = math.nan if n < 2 or one_label else float(cohen_kappa_score(first, second))
    return {"items": n, "observed": observed, "kappa": None if math.isnan(kappa) else kappa}
