"""Pseudo-labels (self-training): a model's confident predictions on unlabeled rows become
training rows (origin `pseudo`), capped and class-balanced so they cannot swamp or skew the gold
data. Pure: the caller supplies the probabilities (the champion, the train-stage model, or any
model of an active-learning loop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
                 pool_texts: Sequence[str], threshold: float = 0.9, max_share: float = 0.5,
                 folds: int = 5, seed: int = 42, min_gain_se: float = 1.0,
                 use: str = "rows") -> dict:
    """Does self-training help on this data, beyond noise? Cross-validated on the gold rows with
    the fast baseline (tasks.label.label_issues: word tf-idf -> NB-LR, the vocabulary fitted on gold +
    pool texts), pseudo rows used as label.pseudo.use says (`use`: rows | nb_ratios): see
    pseudo_check_matrix, which holds the rule."""
    from tasks.label.label_issues import WordNgramCounter, tfidf_block

    if _n_splits(gold_labels, folds) < 2 or not len(pool_texts):
        return _no_check(_n_splits(gold_labels, folds))
    X = tfidf_block(WordNgramCounter(2, min_df=2)).fit_transform([*gold_texts, *pool_texts])
    return pseudo_check_matrix(X[:len(gold_labels)], gold_labels, X[len(gold_labels):],
                               threshold, max_share, folds, seed, min_gain_se, use)


def pseudo_check_matrix(Xg: sp.spmatrix, gold_labels: Sequence[str], Xp: sp.spmatrix,
                        threshold: float = 0.9, max_share: float = 0.5, folds: int = 5,
                        seed: int = 42, min_gain_se: float = 1.0, use: str = "rows",
                        C: float = 4.0, pool_share: float | None = None) -> dict:
    """The pseudo-label check on feature matrices: gold rows Xg (n, d) with their labels, pool
    Xp (m, d). Per stratified fold, a model fitted on the other gold folds pseudo-labels the
    pool (pseudo_label: threshold, max_share x those gold rows, or pool_share x the pool rows
    when given, in their class mix); with
    use="rows" that model is NB-LR (C) and a second NB-LR adds the
    pseudo rows as training rows; with use="nb_ratios" the labeler is logistic regression (C),
    the second model is pseudo_nb_fit (pseudo rows count only for the NB ratios) and it is
    compared with NB-LR on the same gold rows alone: what train fits without pseudo rows, so the
    gain credited is the pseudo rows', not NB weighting's (the label stage passes
    label.pseudo.use, so it checks the mode train will fit). Both are scored on
    the held-out gold fold: the pseudo-labeler never sees the fold it is scored on (no leak),
    and pseudo rows are never scored.

    The pseudo-labels help only when the mean per-fold gain (accuracy as a fraction) is
    positive AND larger than `min_gain_se` x its standard error across folds (paired: the same
    held-out rows score both models), so a gain within the folds' noise is rejected and the
    step can only keep or (probably) improve accuracy; 0 accepts any gain >= 0. Returns
    {accuracy_without, accuracy_with, gain, gain_se, fold_gains, helps, pseudo_rows (mean per
    fold), folds}; helps is False when the gold rows cannot be cross-validated. Raises
    ValueError for an unknown `use`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from tasks.train.baseline import NBLogisticRegression

    if use not in ("rows", "nb_ratios"):
        raise ValueError(f"use must be rows or nb_ratios, got {use!r}")
    y = np.asarray([str(v) for v in gold_labels], dtype=object)
    n_splits = _n_splits(y, folds)
    if n_splits < 2 or not Xp.shape[0]:
        return _no_check(n_splits)
    Xg, Xp = sp.csr_matrix(Xg), sp.csr_matrix(Xp)
    hits, added, gains = np.zeros(2), [], []
    for fit, held in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(Xg, y):
        base = (NBLogisticRegression(C=C, max_iter=1000, random_state=seed) if use == "rows" else
                LogisticRegression(C=C, max_iter=2000, solver="liblinear", random_state=seed)
                ).fit(Xg[fit], y[fit])
        mix = pd.Series(y[fit]).value_counts(normalize=True).to_dict()
        cap = int(pool_share * Xp.shape[0]) if pool_share is not None else int(max_share * len(fit))
        rows = pseudo_label(base.predict_proba(Xp), np.arange(Xp.shape[0]),
                            [str(c) for c in base.classes_], threshold, cap, mix)
        idx, labels = rows["row_id"].to_numpy(dtype=int), rows["label"].to_numpy()
        more = (NBLogisticRegression(C=C, max_iter=1000, random_state=seed).fit(
            sp.vstack([Xg[fit], Xp[idx]]).tocsr(), np.concatenate([y[fit], labels]))
            if use == "rows" else pseudo_nb_fit(Xg[fit], y[fit], Xp[idx], labels, C, seed=seed))
        ref = base if use == "rows" else NBLogisticRegression(  # what train fits without them
            C=C, max_iter=1000, random_state=seed).fit(Xg[fit], y[fit])
        right = [(m.predict(Xg[held]) == y[held]) for m in (ref, more)]
        hits += [r.sum() for r in right]
        gains.append(float(right[1].mean() - right[0].mean()))
        added.append(len(idx))
    without, with_ = hits / len(y)
    gain, se = float(with_ - without), float(np.std(gains, ddof=1) / np.sqrt(len(gains)))
    return {"accuracy_without": float(without), "accuracy_with": float(with_), "gain": gain,
            "gain_se": se, "fold_gains": gains, "helps": helps_beyond_noise(gain, se, min_gain_se),
            "pseudo_rows": float(np.mean(added)), "folds": n_splits}


def _n_splits(labels: Sequence[str], folds: int) -> int:
    """Stratified folds the gold rows allow: `folds`, fewer for a small class, 0 for one class."""
    _, counts = np.unique(np.asarray([str(v) for v in labels], dtype=object), return_counts=True)
    return int(min(folds, counts.min())) if len(counts) > 1 else 0


def _no_check(n_splits: int) -> dict:
    """The check's answer when it cannot run (no folds or an empty pool): do not keep them."""
    return {"accuracy_without": None, "accuracy_with": None, "gain": None, "gain_se": None,
            "fold_gains": [], "helps": False, "pseudo_rows": 0, "folds": n_splits}


def helps_beyond_noise(gain: float, se: float, min_gain_se: float) -> bool:
    """The one acceptance rule of pseudo-labels: a cross-validated gain counts only when it is
    not negative and, for min_gain_se > 0, positive and above min_gain_se standard errors."""
    if min_gain_se <= 0:
        return gain >= 0
    return gain > 0 and gain > min_gain_se * se


def pseudo_nb_fit(X_gold: sp.spmatrix, y_gold: Sequence[str], X_pseudo: sp.spmatrix,
                  y_pseudo: Sequence[str], C: float = 10.0, alpha: float = 1.0,
                  seed: int = 42) -> Any:
    """NB-LR whose Naive-Bayes log-count ratios count the gold AND the pseudo-labelled rows,
    while its logistic-regression weights are fitted on the gold rows only.

    Why: with ~1,000 gold rows the NB ratios of most terms rest on a handful of documents (too
    noisy to help), and adding pseudo rows as training rows teaches the model its own
    mistakes; counting pseudo rows only for the ratios borrows the unlabeled texts' term-class
    statistics without letting them set the decision weights (IMDb, 1,200 labels: see README
    "Label quality"). X_gold (n, d), X_pseudo (m, d): the same feature space (tf-idf); labels
    are class names. Returns a fitted tasks.train.baseline.NBLogisticRegression. Raises ValueError when
    the gold rows hold fewer than 2 classes."""
    from tasks.train.baseline import NBLogisticRegression, fit_nb_lr

    y_gold = np.asarray([str(v) for v in y_gold], dtype=object)
    if len(np.unique(y_gold)) < 2:
        raise ValueError(f"need gold rows of at least 2 classes, got {sorted(set(y_gold))}")
    X = sp.vstack([sp.csr_matrix(X_gold), sp.csr_matrix(X_pseudo)]).tocsr()
    y = np.concatenate([y_gold, np.asarray([str(v) for v in y_pseudo], dtype=object)])
    return fit_nb_lr(NBLogisticRegression(C=C, alpha=alpha, max_iter=1000, random_state=seed),
                     X, y, np.arange(len(y_gold)), np.ones(X.shape[1], dtype=X.dtype))
