"""Pseudo-labels (self-training): a model's confident predictions on unlabeled rows become
training rows (origin `pseudo`), capped and class-balanced so they cannot swamp or skew the gold
data. Pure: the caller supplies the probabilities (the champion, the train-stage model, or any
model of an active-learning loop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

PSEUDO_COLUMNS = ["row_id", "text", "label", "confidence"]


def pseudo_label(model_proba: np.ndarray, texts: Sequence[str], classes: Sequence[str],
                 threshold: float = 0.9, max_rows: int | None = None,
                 class_shares: Mapping[str, float] | None = None,
                 row_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows to pseudo-label, most confident first within each class.

    model_proba: n x k class probabilities (columns in `classes` order) for `texts` (n).
    threshold: a row qualifies when its top probability is >= this. max_rows: the most rows
    returned (None: no cap). class_shares: the class mix the returned rows keep exactly
    (e.g. the gold train mix; None: equal shares); the total shrinks until every class can fill
    its share, so a class with no confident row means no pseudo-labels at all rather than a
    skewed set. Returns columns row_id (position when row_ids is None), text, label, confidence."""
    proba = np.asarray(model_proba, dtype=float).reshape(len(texts), len(classes))
    best, conf = proba.argmax(axis=1), proba.max(axis=1)
    shares = np.array([float((class_shares or {}).get(str(c), 0.0)) if class_shares
                       else 1.0 / len(classes) for c in classes])
    shares = shares / shares.sum()
    ok = conf >= threshold
    avail = np.array([int((ok & (best == k)).sum()) for k in range(len(classes))])
    used = shares > 0
    total = min(avail[used] / shares[used]) if used.any() else 0.0
    total = min(total, float(max_rows)) if max_rows is not None else total
    quota = np.floor(total * shares + 1e-9).astype(int)
    picked = []
    for k in range(len(classes)):
        idx = np.flatnonzero(ok & (best == k))
        picked.extend(idx[np.argsort(-conf[idx], kind="stable")][:quota[k]])
    picked = np.array(sorted(picked, key=lambda i: (-conf[i], i)), dtype=int)
    ids = np.asarray(row_ids if row_ids is not None else np.arange(len(texts)), dtype=object)
    return pd.DataFrame({"row_id": ids[picked], "text": np.asarray(texts, dtype=object)[picked],
                         "label": [str(classes[best[i]]) for i in picked],
                         "confidence": conf[picked]}, columns=PSEUDO_COLUMNS)
