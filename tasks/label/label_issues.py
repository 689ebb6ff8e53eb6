"""label issues: rank trusted TRAIN rows whose label looks wrong (confident learning).

Out-of-fold class probabilities come from a fast baseline cross-validated within the rows given
(word 1..2-gram sublinear tf-idf -> NB-weighted logistic regression, the pieces tasks/train/baseline.py
uses), then cleanlab's `find_label_issues` picks the rows whose given label the model confidently
contradicts, ranked by label quality (worst first). The caller passes train rows only: the test
and val splits are never examined or changed (the label stage asks tasks.shard.split_names)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from tasks.train.baseline import NBLogisticRegression, tfidf_block
from tasks.train.ngrams import WordNgramCounter

log = logging.getLogger(__name__)

ISSUE_REASON = "suspected_label_error"
ISSUE_COLUMNS = ["position", "given_label", "suggested_label", "label_quality"]


def oof_proba(texts: Sequence[str], labels: Sequence[str], folds: int = 5, C: float = 4.0,
              seed: int = 42) -> tuple[list[str], np.ndarray] | None:
    """Out-of-fold class probabilities: each row is scored by a model that never saw it.

    texts, labels: n rows. Returns (classes sorted, proba n x k) or None when a class has fewer
    than 2 rows or there is one class (no honest cross-validation). Folds shrink to the smallest
    class count. The tf-idf vocabulary is fitted on all rows once (unsupervised, no label leak)."""
    y = np.asarray([str(v) for v in labels], dtype=object)
    classes, counts = np.unique(y, return_counts=True)
    n_splits = int(min(folds, counts.min())) if len(classes) > 1 else 0
    if n_splits < 2:
        return None
    X = tfidf_block(WordNgramCounter(2, min_df=2 if len(y) >= 50 else 1)).fit_transform(list(texts))
    proba = np.zeros((len(y), len(classes)))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fit_idx, score_idx in cv.split(np.zeros(len(y)), y):
        clf = NBLogisticRegression(C=C, max_iter=1000, random_state=seed).fit(X[fit_idx], y[fit_idx])
        cols = [list(classes).index(c) for c in clf.classes_]  # a fold may miss no class (stratified)
        proba[np.ix_(score_idx, cols)] = clf.predict_proba(X[score_idx])
    return [str(c) for c in classes], proba


def find_issues(labels: Sequence[str], classes: Sequence[str], proba: np.ndarray,
                filter_by: str = "confident_learning") -> pd.DataFrame:
    """cleanlab confident learning on out-of-fold probabilities (filter_by: cleanlab's rule;
    `confident_learning` measured the most precise on IMDb with 5% flips, see the README).

    Returns one row per suspected label error, worst first: position (0-based row of the input),
    given_label, suggested_label (the model's argmax), label_quality (self-confidence in [0, 1])."""
    from cleanlab.filter import find_label_issues

    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[str(v)] for v in labels], dtype=int)
    if len(y) == 0:
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    ranked = find_label_issues(labels=y, pred_probs=proba, filter_by=filter_by,
                               return_indices_ranked_by="self_confidence", n_jobs=1)
    ranked = np.asarray(ranked, dtype=int)
    return pd.DataFrame({
        "position": ranked,
        "given_label": [str(classes[y[i]]) for i in ranked],
        "suggested_label": [str(classes[int(proba[i].argmax())]) for i in ranked],
        "label_quality": [float(proba[i, y[i]]) for i in ranked],
    })


def detect(frame: pd.DataFrame, folds: int = 5, C: float = 4.0, seed: int = 42,
           filter_by: str = "confident_learning") -> pd.DataFrame | None:
    """Suspected label errors among frame's rows (columns text, label, row_id): find_issues joined
    with row_id and text. None when cross-validation is impossible (see oof_proba)."""
    out = oof_proba(frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist(),
                    folds, C, seed)
    if out is None:
        return None
    issues = find_issues(frame["label"].astype(str).tolist(), *out, filter_by=filter_by)
    rows = frame.iloc[issues["position"].to_numpy()]
    return issues.assign(row_id=rows["row_id"].to_numpy(), text=rows["text"].to_numpy())


def issue_report(issues: pd.DataFrame | None, examined: pd.DataFrame, policy: str,
                 top: int = 20) -> dict:
    """The label-issue report: rows examined, issues found (total and per given class, with the
    share of that class), and the `top` worst examples (row_id, text head, given, suggested)."""
    if issues is None:
        return {"policy": policy, "rows_examined": len(examined), "issues": 0,
                "skipped": "fewer than 2 rows in some class, or one class"}
    per_class = examined["label"].astype(str).value_counts()
    found = issues["given_label"].value_counts()
    return {
        "policy": policy, "rows_examined": len(examined), "issues": len(issues),
        "issue_share": round(len(issues) / max(len(examined), 1), 6),
        "per_class": {str(c): {"issues": int(found.get(c, 0)), "rows": int(n),
                               "share": round(int(found.get(c, 0)) / int(n), 6)}
                      for c, n in per_class.sort_index().items()},
        "top": [{"row_id": str(r.row_id), "text": str(r.text)[:200], "given": r.given_label,
                 "suggested": r.suggested_label, "label_quality": round(r.label_quality, 6)}
                for r in issues.head(top).itertuples()],
    }
