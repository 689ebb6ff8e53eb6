"""active: which unlabeled rows a person should label next (active learning).

Labels are the scarcest input a team has; each one should buy the most accuracy. A row is worth
labeling when the current model is unsure of it (uncertainty, margin, entropy), but the N most
uncertain rows are often N near-copies of one confusing text, so a diversity step clusters the
most uncertain candidates on their features and keeps the most uncertain row of each cluster.
Exact duplicates (after the one text-normalisation rule) are removed first. Pure: arrays in,
indices out; the model scoring and the queue file are the caller's (textloop/cli/label_commands.py,
benchmarks/active_learning.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from textloop.core.text import normalize_text

log = logging.getLogger(__name__)

Strategy = Literal["uncertainty", "margin", "entropy", "random"]
STRATEGIES: tuple[str, ...] = ("uncertainty", "margin", "entropy", "random")


def informativeness(proba: np.ndarray, strategy: Strategy, seed: int = 0) -> np.ndarray:
    """How much a label would teach the model, per row (higher = label it sooner).

    proba: (n_rows, n_classes) class probabilities, rows summing to 1. uncertainty = 1 - max p;
    margin = 1 - (p_best - p_second); entropy = -sum p log p (nats); random = uniform [0, 1)
    from `seed`. Returns shape (n_rows,). Raises ValueError for an unknown strategy or a proba
    that is not 2-D."""
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2:
        raise ValueError(f"proba must be 2-D (rows, classes), got shape {proba.shape}")
    if strategy == "uncertainty":
        return 1.0 - proba.max(axis=1)
    if strategy == "margin":
        if proba.shape[1] < 2:  # one class: nothing to be unsure about
            return np.zeros(len(proba))
        top2 = np.sort(proba, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if strategy == "entropy":
        p = np.clip(proba, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)
    if strategy == "random":
        return np.random.default_rng(seed).random(len(proba))
    raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")


def strategy_for(strategy: Strategy, labeled_rows: int, warmup_labels: int) -> Strategy:
    """The strategy to use now: `random` while fewer than `warmup_labels` rows are labeled,
    else `strategy`. Why: a model fitted on a few hundred labels is unsure of the wrong rows;
    its most uncertain rows lean to one class, and the next model learns less from them than
    from a random batch (IMDb: uncertainty trailed random until ~600 labels, see README
    "Active learning"). 0 turns the warm-up off."""
    return "random" if labeled_rows < warmup_labels else strategy


def first_of_duplicates(texts: Sequence[str], order: np.ndarray) -> np.ndarray:
    """`order` (row positions, best first) without rows whose normalised text an earlier row
    in the order already has: the best-scored copy of each text stays."""
    keys = pd.Series([normalize_text(str(texts[i])) for i in order])
    return np.asarray(order)[~keys.duplicated().to_numpy()]


def text_features(texts: Sequence[str], dims: int = 50, seed: int = 0) -> np.ndarray:
    """A cheap dense embedding for clustering when the model offers none: word tf-idf of the
    given texts reduced by truncated SVD to at most `dims` columns, rows L2-normalised.
    Shape (len(texts), k), k <= dims."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=1).fit_transform(
        [normalize_text(str(t)) for t in texts])
    k = min(dims, tfidf.shape[1] - 1, tfidf.shape[0] - 1)
    if k < 1:
        return normalize(tfidf.toarray())
    return normalize(TruncatedSVD(n_components=k, random_state=seed).fit_transform(tfidf))


def diverse_top(scores: np.ndarray, features: np.ndarray | sp.spmatrix, candidates: np.ndarray,
                n: int, seed: int = 0) -> np.ndarray:
    """Pick n of `candidates` (row positions) spread over the feature space: k-means
    (MiniBatchKMeans, k = n) on the candidates' features, then the best-scored row of each
    cluster; clusters left empty are filled with the next best rows. Returns row positions,
    best score first."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.preprocessing import normalize

    candidates = np.asarray(candidates)
    if len(candidates) <= n:
        return candidates[np.argsort(-scores[candidates], kind="stable")]
    x = features[candidates]
    x = normalize(x.toarray() if sp.issparse(x) else np.asarray(x, dtype=float))
    km = MiniBatchKMeans(n_clusters=n, random_state=seed, n_init=3, batch_size=1024)
    clusters = km.fit_predict(x)
    frame = pd.DataFrame({"row": candidates, "score": scores[candidates], "cluster": clusters})
    frame = frame.sort_values("score", ascending=False, kind="stable")
    chosen = frame.drop_duplicates("cluster")["row"].to_numpy()
    if len(chosen) < n:
        rest = frame[~frame["row"].isin(chosen)]["row"].to_numpy()[: n - len(chosen)]
        chosen = np.concatenate([chosen, rest])
    return chosen[np.argsort(-scores[chosen], kind="stable")]


def _features_for(texts: Sequence[str], features: np.ndarray | sp.spmatrix | None,
                  candidates: np.ndarray, seed: int) -> np.ndarray | sp.spmatrix:
    """The given features, or `text_features` of the candidates placed at their rows."""
    if features is not None:
        return features
    own = text_features([texts[i] for i in candidates], seed=seed)
    feats = np.zeros((len(texts), own.shape[1]))
    feats[candidates] = own
    return feats


def _per_class(order: np.ndarray, predicted: np.ndarray, n: int) -> list[tuple[np.ndarray, int]]:
    """(rows of one predicted class in `order`, picks for it): n shared equally among the
    classes present; a class with too few rows passes its share on."""
    groups = [order[predicted[order] == c] for c in np.unique(predicted[order])]
    shares = [0] * len(groups)
    left = n
    while left > 0 and any(len(g) > s for g, s in zip(groups, shares)):
        for i, g in enumerate(groups):
            if left > 0 and len(g) > shares[i]:
                shares[i] += 1
                left -= 1
    return [(g, k) for g, k in zip(groups, shares) if k > 0]


def select_batch(texts: Sequence[str], proba: np.ndarray, n: int, strategy: Strategy,
                 features: np.ndarray | sp.spmatrix | None = None, diversity: bool = True,
                 candidates_per_pick: int = 10, seed: int = 0, balance: bool = False
                 ) -> pd.DataFrame:
    """The n rows to label next, most informative first.

    texts: the pool (len n_rows); proba: (n_rows, n_classes) from the current model; features:
    one row per text to cluster on (None: `text_features` of the candidates). Exact duplicates
    (normalised text) are removed; with `diversity` (ignored for random) the
    n * candidates_per_pick most informative rows are clustered into n groups and the most
    informative row of each is taken; `balance` shares the n picks equally among the classes
    the model predicts (uncertain rows of a biased model are mostly of one class). Returns a frame (position, score, rank) of at most n rows
    ordered by score descending; rank 1 = label first. Raises ValueError on mismatched
    lengths, n < 1 or an unknown strategy."""
    if len(texts) != len(proba):
        raise ValueError(f"{len(texts)} texts but {len(proba)} probability rows")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    scores = informativeness(proba, strategy, seed)
    order = first_of_duplicates(texts, np.argsort(-scores, kind="stable"))
    if strategy == "random":
        picked = order[:n]
    else:
        groups = (_per_class(order, proba.argmax(axis=1), n) if balance
                  else [(order, n)])
        picked = np.concatenate([
            diverse_top(scores, _features_for(texts, features, rows[: k * candidates_per_pick],
                                              seed), rows[: k * candidates_per_pick], k, seed)
            if diversity else rows[:k] for rows, k in groups])
        picked = picked[np.argsort(-scores[picked], kind="stable")]
    log.info("active: %d of %d rows picked by %s%s", len(picked), len(texts), strategy,
             " + diversity" if diversity and strategy != "random" else "")
    return pd.DataFrame({"position": picked, "score": scores[picked],
                         "rank": np.arange(1, len(picked) + 1)})
