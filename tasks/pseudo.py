"""Pseudo-labels (self-training): a model's confident predictions on unlabeled rows become
training rows (origin `pseudo`), capped and class-balanced so they cannot swamp or skew the gold
data. Pure: the caller supplies the probabilities (the champion, the train-stage model, or any
model of an active-learning loop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

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


def pseudo_check(gold_texts: Sequence[str], gold_labels: Sequence[str],
                 pseudo_texts: Sequence[str], pseudo_labels: Sequence[str], folds: int = 5,
                 seed: int = 42) -> dict:
    """Do these pseudo-labels help? Out-of-fold accuracy on the gold rows of the fast baseline
    (tasks.label_issues: word tf-idf -> NB-LR) trained on the other gold folds without and with
    all the pseudo rows. Pseudo rows are never scored, so the check cannot reward agreeing with
    the model that made them. Returns {accuracy_without, accuracy_with, helps (with >= without),
    folds}; helps is False when the gold rows cannot be cross-validated."""
    from sklearn.model_selection import StratifiedKFold

    from tasks.label_issues import NBLogisticRegression, WordNgramCounter, tfidf_block

    y = np.asarray([str(v) for v in gold_labels], dtype=object)
    _, counts = np.unique(y, return_counts=True)
    n_splits = int(min(folds, counts.min())) if len(counts) > 1 else 0
    if n_splits < 2 or not len(pseudo_texts):
        return {"accuracy_without": None, "accuracy_with": None, "helps": False, "folds": n_splits}
    X = tfidf_block(WordNgramCounter(2, min_df=2)).fit_transform([*gold_texts, *pseudo_texts])
    Xg, Xp = X[:len(y)], X[len(y):]
    yp = np.asarray([str(v) for v in pseudo_labels], dtype=object)
    hits = np.zeros(2)
    for fit, held in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(Xg, y):
        for k, (Xf, yf) in enumerate([(Xg[fit], y[fit]),
                                      (sp.vstack([Xg[fit], Xp]).tocsr(), np.concatenate([y[fit], yp]))]):
            clf = NBLogisticRegression(C=4.0, max_iter=1000, random_state=seed).fit(Xf, yf)
            hits[k] += (clf.predict(Xg[held]) == y[held]).sum()
    without, with_ = hits / len(y)
    return {"accuracy_without": float(without), "accuracy_with": float(with_),
            "helps": bool(with_ >= without), "folds": n_splits}
