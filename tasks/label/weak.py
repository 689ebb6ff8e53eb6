"""Weak supervision: labeling functions (LFs) vote on unlabeled rows; Snorkel's LabelModel (or a
majority vote) turns the votes into weak labels; LFAnalysis reports each LF.

An LF is any callable `text -> label | ABSTAIN` (a class name as the data spells it, or None);
the helpers below build the common ones. A user module (params `label.functions`) lists them as
`LFS = [...]`, or defines them at module level (helper-built LFs and functions named `lf_*`).
An abstain is not a vote: it never counts for or against a class."""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.errors import UserError

log = logging.getLogger(__name__)

ABSTAIN = None  # what an LF returns when it has no opinion
_NO_VOTE = -1  # the label matrix's abstain (Snorkel's convention)


class LabelingFunction:
    """A named LF. `fn(text) -> label | None`; `batch(texts) -> list` when scoring all at once is
    faster (a model); `needs_model`: the label stage binds the current champion (`model_lf`)."""

    def __init__(self, name: str, fn: Callable[[str], Any] | None = None,
                 batch: Callable[[list[str]], list] | None = None, needs_model: bool = False):
        self.name, self.fn, self.batch, self.needs_model = name, fn, batch, needs_model

    def __call__(self, text: str) -> Any:
        return self.fn(text) if self.fn else self.apply([text])[0]

    def apply(self, texts: Sequence[str]) -> list:
        """One vote (or None) per text."""
        return self.batch(list(texts)) if self.batch else [self.fn(t) for t in texts]


def keyword_lf(label: str, keywords: Iterable[str], name: str | None = None,
               case_sensitive: bool = False) -> LabelingFunction:
    """Votes `label` when any keyword (whole words/phrases) occurs, else abstains."""
    words = sorted(set(keywords), key=len, reverse=True)
    pattern = r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b"
    return regex_lf(label, pattern, name or f"kw_{label}_{words[0]}", 0 if case_sensitive else re.IGNORECASE)


def regex_lf(label: str, pattern: str, name: str | None = None,
             flags: int = re.IGNORECASE) -> LabelingFunction:
    """Votes `label` when the regular expression matches anywhere, else abstains."""
    rx = re.compile(pattern, flags)
    return LabelingFunction(name or f"re_{label}", lambda t: label if rx.search(t) else ABSTAIN)


def model_lf(min_confidence: float = 0.9, name: str = "champion",
             model: Any = None) -> LabelingFunction:
    """The model's label when its confidence reaches min_confidence, else abstain. With
    model=None the label stage binds the project's champion (no champion: it always abstains)."""
    lf = LabelingFunction(name, needs_model=True)
    lf.model, lf.min_confidence = model, min_confidence  # type: ignore[attr-defined]

    def batch(texts: list[str]) -> list:
        model = lf.model  # type: ignore[attr-defined]
        if model is None or not texts:
            return [ABSTAIN] * len(texts)
        proba = np.asarray(model.predict_proba(texts))
        best = proba.argmax(axis=1)
        return [str(model.classes_[j]) if proba[i, j] >= min_confidence else ABSTAIN
                for i, j in enumerate(best)]

    lf.batch = batch
    return lf


def load_lfs(path: Path) -> list[LabelingFunction]:
    """The LFs of a user module: its `LFS` list, else its module-level LabelingFunctions and
    `lf_*` functions in definition order. Raises UserError naming the file when it cannot be
    imported or defines none."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label.functions names no file")
    spec = importlib.util.spec_from_file_location(f"textloop_user_lfs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # user code: any error is the user's to fix, named with the file
        raise UserError(f"{path}: importing the labeling functions failed: {exc!r}") from exc
    found = getattr(module, "LFS", None)
    if found is None:
        found = [v for k, v in vars(module).items() if isinstance(v, LabelingFunction)
                 or (k.startswith("lf_") and callable(v))]
    lfs = [f if isinstance(f, LabelingFunction) else LabelingFunction(getattr(f, "__name__", str(f)), f)
           for f in found]
    if not lfs:
        raise UserError(f"{path}: defines no labeling function (LFS = [...] or lf_* functions)")
    names = [lf.name for lf in lfs]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: labeling function names repeat: {sorted(names)}")
    sys.modules.pop(spec.name, None)
    return lfs


def label_matrix(lfs: Sequence[LabelingFunction], texts: Sequence[str],
                 classes: Sequence[str]) -> np.ndarray:
    """n texts x m LFs of class indices (-1 = abstain). Raises UserError when an LF returns a
    value that is not a class (naming the LF, the value and the classes)."""
    index = {str(c): i for i, c in enumerate(classes)}
    L = np.full((len(texts), len(lfs)), _NO_VOTE, dtype=int)
    for j, lf in enumerate(lfs):
        for i, vote in enumerate(lf.apply(texts)):
            if vote is None or (isinstance(vote, float) and np.isnan(vote)):
                continue
            if str(vote) not in index:
                raise UserError(f"labeling function {lf.name!r} returned {vote!r}, not a class "
                                f"({', '.join(map(str, classes))}) nor None (abstain)")
            L[i, j] = index[str(vote)]
    return L


def combine(L: np.ndarray, n_classes: int, method: str = "label_model",
            seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Votes -> (class index per row, -1 where no LF voted or a majority tie; its probability).
    method: `label_model` (Snorkel LabelModel, learns LF accuracies and correlations from
    agreement; needs >= 3 LFs) or `majority` (Snorkel MajorityLabelVoter)."""
    from snorkel.labeling.model import LabelModel, MajorityLabelVoter

    voted = (L != _NO_VOTE).any(axis=1)
    if not voted.any():
        return np.full(len(L), _NO_VOTE), np.zeros(len(L))
    if method == "majority":
        model = MajorityLabelVoter(cardinality=n_classes)
    else:
        model = LabelModel(cardinality=n_classes, verbose=False)
        model.fit(L_train=L[voted], n_epochs=500, seed=seed, progress_bar=False)
    pred, proba = model.predict(L, return_probs=True, tie_break_policy="abstain")
    pred = np.where(voted, pred, _NO_VOTE)
    conf = np.where(pred >= 0, proba[np.arange(len(L)), np.maximum(pred, 0)], 0.0)
    return pred.astype(int), conf


def lf_report(lfs: Sequence[LabelingFunction], L: np.ndarray, L_gold: np.ndarray,
              y_gold: np.ndarray) -> dict[str, dict]:
    """Per LF name (Snorkel LFAnalysis): coverage, overlaps, conflicts on the unlabeled rows
    (shares of those rows), and votes and accuracy on the gold rows (None: it never voted there)."""
    from snorkel.labeling import LFAnalysis

    out = {}
    n = len(L)
    cov = LFAnalysis(L).lf_coverages() if n else np.zeros(len(lfs))
    over = LFAnalysis(L).lf_overlaps() if n else np.zeros(len(lfs))
    conf = LFAnalysis(L).lf_conflicts() if n else np.zeros(len(lfs))
    for j, lf in enumerate(lfs):
        votes = L_gold[:, j] != _NO_VOTE if len(L_gold) else np.zeros(0, dtype=bool)
        correct = int((L_gold[votes, j] == y_gold[votes]).sum()) if votes.any() else 0
        out[lf.name] = {"coverage": round(float(cov[j]), 6),
                    "overlaps": round(float(over[j]), 6), "conflicts": round(float(conf[j]), 6),
                    "gold_votes": int(votes.sum()),
                    "gold_accuracy": round(correct / int(votes.sum()), 6) if votes.any() else None}
    return out


def weak_labels(unlabeled: pd.DataFrame, gold: pd.DataFrame, lfs: Sequence[LabelingFunction],
                classes: Sequence[str], method: str = "label_model",
                seed: int = 42) -> tuple[pd.DataFrame, dict]:
    """Weak labels for `unlabeled` (columns row_id, text) from the LFs' votes, learned/checked
    against `gold` (columns text, label). Returns (rows that got a label: row_id, label,
    weak_confidence; the report: per-LF table, rows covered, rows labeled, per class)."""
    requested = method
    if method == "label_model" and len(lfs) < 3:  # Snorkel's LabelModel needs three or more
        log.warning("weak labels: %d labeling functions < 3: majority vote instead of the "
                    "label model", len(lfs))
        method = "majority"
    L = label_matrix(lfs, unlabeled["text"].astype(str).tolist(), classes)
    L_gold = label_matrix(lfs, gold["text"].astype(str).tolist(), classes)
    index = {str(c): i for i, c in enumerate(classes)}
    y_gold = np.array([index.get(str(v), _NO_VOTE) for v in gold["label"]], dtype=int)
    both, conf = combine(np.vstack([L, L_gold]), len(classes), method, seed)  # one model for both
    pred, gold_pred, conf = both[:len(L)], both[len(L):], conf[:len(L)]
    got = pred >= 0
    rows = pd.DataFrame({"row_id": unlabeled["row_id"].to_numpy()[got],
                         "label": [str(classes[k]) for k in pred[got]],
                         "weak_confidence": conf[got]})
    hit = gold_pred >= 0
    report = {"combine": method, "combine_requested": requested, "functions": lf_report(lfs, L, L_gold, y_gold),
              "rows_candidates": len(L), "rows_covered": int((L != _NO_VOTE).any(axis=1).sum()),
              "rows_labeled": int(got.sum()),
              "labels": {str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()},
              "gold_rows": len(L_gold), "gold_coverage": round(float(hit.mean()), 6) if len(hit) else None,
              "gold_accuracy": (round(float((gold_pred[hit] == y_gold[hit]).mean()), 6)
                                if hit.any() else None)}
    return rows, report
