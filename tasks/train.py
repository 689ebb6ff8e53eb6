"""train: fit the CPU baseline (word + char tf-idf -> NB-weighted logistic regression), or delegate
to the transformer trainer; write a self-describing model folder."""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import log_expit
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.utils.validation import check_is_fitted, validate_data

from textloop.core.config import Params, TfidfConfig
from textloop.core.model import write_meta

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
# Scripts written without spaces: each character is its own word token (so word bigrams become
# character bigrams); everything else is a run of word characters or one punctuation mark.
_NO_SPACE = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN_PATTERN = rf"[{_NO_SPACE}]|[^\W{_NO_SPACE}]+|[^\w\s]"

MetricCallback = Callable[[str, float, "int | None"], None]


class NBLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression on Naive-Bayes log-count-ratio scaled features (NB-LR, Wang & Manning
    2012); one-vs-rest with per-class ratios when there are more than two classes."""

    def __init__(self, C: float = 4.0, alpha: float = 1.0, nb_weighting: bool = True,
                 max_iter: int = 1000, random_state: int | None = None):
        self.C = C
        self.alpha = alpha
        self.nb_weighting = nb_weighting
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y) -> NBLogisticRegression:
        """Fit one binary model per ratio row; the ratio is folded into coef_ so predicting is X @ coef."""
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float32, np.float64])
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 classes to train, got {list(self.classes_)}")
        targets = [1] if len(self.classes_) == 2 else range(len(self.classes_))
        present = _presence(X)
        fitted = [self._fit_binary(X, present, y_idx == k) for k in targets]
        self.coef_ = np.vstack([c for c, _ in fitted]).astype(np.float32)  # half the size on disk
        self.intercept_ = np.array([b for _, b in fitted])
        return self

    def _fit_binary(self, X: sp.csr_matrix, present: sp.csr_matrix,
                    positive: np.ndarray) -> tuple[np.ndarray, float]:
        """One class against the rest on ratio-scaled features; returns the unscaled-space weights."""
        ratio = (nb_log_ratio(present, positive, self.alpha) if self.nb_weighting
                 else np.ones(X.shape[1], dtype=X.dtype))
        # liblinear's primal Newton solver: its time grows far less with C than the dual's
        # (3-class tweets at C=128: 12s vs 27s per class), so a wide C search stays affordable
        lr = LogisticRegression(C=self.C, solver="liblinear", dual=False, max_iter=self.max_iter,
                                random_state=self.random_state)
        lr.fit(X @ sp.diags(ratio), positive.astype(int))
        return lr.coef_.ravel() * ratio, float(lr.intercept_[0])

    def decision_function(self, X) -> np.ndarray:
        """Per-model logits: shape (n,) for binary, (n, n_classes) otherwise."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float32, np.float64], reset=False)
        scores = np.asarray(X @ self.coef_.T, dtype=np.float64) + self.intercept_
        return scores.ravel() if len(self.classes_) == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        """Binary: the sigmoid. Multi-class: one-vs-rest sigmoids normalized to sum to 1 (in log space)."""
        scores = self.decision_function(X)
        if len(self.classes_) == 2:
            return np.column_stack([np.exp(log_expit(-scores)), np.exp(log_expit(scores))])
        logp = log_expit(scores)
        p = np.exp(logp - logp.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable class label."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def _presence(X: sp.spmatrix) -> sp.csr_matrix:
    """Binarized copy of X: NB ratios from presence counts beat ratios from tf-idf mass."""
    present = sp.csr_matrix(X, copy=True)
    present.data = (present.data != 0).astype(np.float32)
    return present


def nb_log_ratio(present: sp.csr_matrix, positive: np.ndarray, alpha: float) -> np.ndarray:
    """Smoothed log-count ratio r = log((p/|p|) / (q/|q|)) of one class against the rest."""
    pos = alpha + np.asarray(present.T @ positive.astype(np.float32)).ravel()
    neg = alpha + np.asarray(present.T @ (~positive).astype(np.float32)).ravel()
    return np.log((pos / pos.sum()) / (neg / neg.sum())).astype(present.dtype)


# --- n-gram counting: CountVectorizer-equivalent counts on integer codes (several times faster)

def _as_docs(X: Iterable[str]) -> list[str]:
    """Accept any iterable of str; a bare string is a mistake sklearn also rejects."""
    if isinstance(X, str):
        raise TypeError("expected an iterable of texts, got one str")
    return [str(d) for d in X]


def _ids(units: Sequence[list[str]], index: dict[str, int],
         grow: bool) -> tuple[np.ndarray, np.ndarray]:
    """Flatten per-document units to integer ids (-1 when unknown) and the document of each."""
    lengths = np.fromiter(map(len, units), dtype=np.int64, count=len(units))
    if grow:
        ids = [index.setdefault(u, len(index)) for doc in units for u in doc]
    else:
        get = index.get
        ids = [get(u, -1) for doc in units for u in doc]
    return np.asarray(ids, dtype=np.int64), np.repeat(np.arange(len(units)), lengths)


def _distinct(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based: numpy's hash unique is slow on wide int64 keys)."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def _doc_freq(doc_of: np.ndarray, code: np.ndarray, n_codes: int) -> np.ndarray:
    """Number of documents each code occurs in."""
    pairs = _distinct(doc_of * n_codes + code)
    return np.bincount(pairs % n_codes, minlength=n_codes)


def _select(df: np.ndarray, tf: np.ndarray, min_df: int, max_features: int | None) -> np.ndarray:
    """CountVectorizer's pruning: df >= min_df, then the max_features most frequent terms."""
    keep = np.flatnonzero(df >= min_df)
    if max_features is not None and len(keep) > max_features:
        keep = np.sort(keep[np.argsort(-tf[keep], kind="stable")[:max_features]])
    return keep


def _rank(keep: np.ndarray, size: int) -> np.ndarray:
    """Map old ids to their rank among kept ids (-1 when dropped)."""
    rank = np.full(size, -1, dtype=np.int64)
    rank[keep] = np.arange(len(keep))
    return rank


class WordNgramCounter(TransformerMixin, BaseEstimator):
    """Lowercased word 1..n-gram counts, equal to CountVectorizer's up to column order, built by
    chaining integer codes level by level (an n-gram is kept only if its prefix is: df is monotone)."""

    def __init__(self, ngram_max: int = 1, token_pattern: str = TOKEN_PATTERN, min_df: int = 1,
                 max_features: int | None = None, dtype=np.float32):
        self.ngram_max = ngram_max
        self.token_pattern = token_pattern
        self.min_df = min_df
        self.max_features = max_features
        self.dtype = dtype

    def _tokens(self, docs: list[str]) -> list[list[str]]:
        """Lowercased tokens per document (same preprocessing as CountVectorizer's defaults)."""
        pattern = re.compile(self.token_pattern)
        return [pattern.findall(d.lower()) for d in docs]

    def fit(self, X, y=None) -> WordNgramCounter:
        """Learn the kept n-grams (fit_transform does the work: counting is the fit)."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None) -> sp.csr_matrix:
        """Learn the kept n-grams and return the training counts in one pass."""
        docs = _as_docs(X)
        index: dict[str, int] = {}
        ids, doc_of = _ids(self._tokens(docs), index, grow=True)
        df = _doc_freq(doc_of, ids, len(index))
        keep = np.flatnonzero(df >= self.min_df)
        if len(keep) == 0:
            raise ValueError(f"no word terms occur in >= min_df={self.min_df} documents")
        words = np.array(list(index), dtype=object)[keep]
        self.tokens_ = dict(zip(words.tolist(), range(len(keep))))
        tok = _rank(keep, len(index))[ids]
        levels, self.codes_ = self._levels(tok, doc_of, fit=True)
        return self._finish(levels, doc_of, len(docs), fit=True)

    def transform(self, X) -> sp.csr_matrix:
        """Counts of the fitted n-grams (unknown ones are ignored)."""
        check_is_fitted(self, "tokens_")
        docs = _as_docs(X)
        tok, doc_of = _ids(self._tokens(docs), self.tokens_, grow=False)
        levels, _ = self._levels(tok, doc_of, fit=False)
        return self._finish(levels, doc_of, len(docs), fit=False)

    def _levels(self, tok: np.ndarray, doc_of: np.ndarray,
                fit: bool) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """Per level n, the n-gram id starting at each position (-1: none, unknown or pruned)."""
        levels, codes = [tok], [None]
        base = len(self.tokens_)
        for n in range(2, self.ngram_max + 1):
            prev = levels[-1][: len(tok) - 1]
            nxt = tok[n - 1:]
            ok = (prev[: len(nxt)] >= 0) & (nxt >= 0) & (doc_of[: len(nxt)] == doc_of[n - 1:])
            code = prev[: len(nxt)] * base + nxt
            level = np.full(len(tok), -1, dtype=np.int64)
            if fit:
                uniq, inv = np.unique(code[ok], return_inverse=True)
                df = _doc_freq(doc_of[: len(nxt)][ok], inv, len(uniq))
                keep = np.flatnonzero(df >= self.min_df)
                codes.append(uniq[keep])
                level[: len(nxt)][ok] = _rank(keep, len(uniq))[inv]
            else:
                known = self.codes_[n - 1]
                pos = np.searchsorted(known, code[ok]).clip(max=max(len(known) - 1, 0))
                hit = known[pos] == code[ok] if len(known) else np.zeros(ok.sum(), bool)
                level[: len(nxt)][ok] = np.where(hit, pos, -1)
            levels.append(level)
        return levels, codes

    def _finish(self, levels: list[np.ndarray], doc_of: np.ndarray, n_docs: int,
                fit: bool) -> sp.csr_matrix:
        """Stack the levels into one doc x term count matrix, pruned to max_features at fit."""
        sizes = [len(self.tokens_)] + [len(c) for c in self.codes_[1:]]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        rows = np.concatenate([doc_of[lv >= 0] for lv in levels])
        cols = np.concatenate([lv[lv >= 0] + off for lv, off in zip(levels, offsets)])
        X = sp.csr_matrix((np.ones(len(cols), dtype=self.dtype), (rows, cols)),
                          shape=(n_docs, offsets[-1]))
        if fit:
            tf = np.asarray(X.sum(axis=0)).ravel()
            keep = _select(np.bincount(X.indices, minlength=X.shape[1]), tf, self.min_df,
                           self.max_features)
            self.columns_ = None if len(keep) == X.shape[1] else keep  # None: all (smaller pickle)
        return X if self.columns_ is None else X[:, self.columns_]


def wb_grams(word: str, lo: int, hi: int) -> list[str]:
    """sklearn's char_wb n-grams of one word: padded with spaces, a short word counted once."""
    w = f" {word} "
    out: list[str] = []
    for n in range(lo, hi + 1):
        if len(w) <= n:
            out.append(w)
            break
        out.extend(w[i:i + n] for i in range(len(w) - n + 1))
    return out


class CharWbNgramCounter(TransformerMixin, BaseEstimator):
    """char_wb n-gram counts, equal to CountVectorizer(analyzer='char_wb')'s up to column order,
    computed as (doc x word counts) @ (word x n-gram counts): each distinct word is sliced once."""

    def __init__(self, ngram_range: tuple[int, int] = (2, 4), min_df: int = 1,
                 max_features: int | None = None, dtype=np.float32):
        self.ngram_range = ngram_range
        self.min_df = min_df
        self.max_features = max_features
        self.dtype = dtype

    def _doc_words(self, docs: list[str]) -> tuple[sp.csr_matrix, list[str]]:
        """Doc x distinct-word counts (lowercased, whitespace split, as char_wb does) + the words."""
        index: dict[str, int] = {}
        ids, doc_of = _ids([d.lower().split() for d in docs], index, grow=True)
        W = sp.csr_matrix((np.ones(len(ids), dtype=self.dtype), (doc_of, ids)),
                          shape=(len(docs), len(index)))
        return W, list(index)

    def _word_grams(self, words: list[str], grams: dict[str, int], grow: bool) -> sp.csr_matrix:
        """Word x n-gram counts; grows the n-gram index at fit, ignores unknown n-grams after."""
        lo, hi = self.ngram_range
        per_word = [wb_grams(w, lo, hi) for w in words]
        ids, word_of = _ids(per_word, grams, grow=grow)
        ok = ids >= 0
        return sp.csr_matrix((np.ones(ok.sum(), dtype=self.dtype), (word_of[ok], ids[ok])),
                             shape=(len(words), len(grams)))

    def fit(self, X, y=None) -> CharWbNgramCounter:
        """Learn the kept n-grams (fit_transform does the work: counting is the fit)."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None) -> sp.csr_matrix:
        """Learn the kept n-grams and return the training counts in one pass."""
        W, words = self._doc_words(_as_docs(X))
        grams: dict[str, int] = {}
        C = (W @ self._word_grams(words, grams, grow=True)).tocsr()
        df = np.bincount(C.indices, minlength=C.shape[1])
        keep = _select(df, np.asarray(C.sum(axis=0)).ravel(), self.min_df, self.max_features)
        if len(keep) == 0:
            raise ValueError(f"no char n-grams occur in >= min_df={self.min_df} documents")
        names = np.array(list(grams), dtype=object)[keep]
        self.grams_ = dict(zip(names.tolist(), range(len(keep))))
        return C[:, keep]

    def transform(self, X) -> sp.csr_matrix:
        """Counts of the fitted n-grams (unknown ones are ignored)."""
        check_is_fitted(self, "grams_")
        W, words = self._doc_words(_as_docs(X))
        return (W @ self._word_grams(words, self.grams_, grow=False)).tocsr()


def build_features(cfg: TfidfConfig) -> FeatureUnion:
    """Word 1..n-gram tf-idf plus char_wb n-gram tf-idf (so text without spaces still has features)."""
    word = WordNgramCounter(cfg.word_ngram_max, min_df=cfg.min_df, max_features=cfg.max_features)
    char = CharWbNgramCounter((cfg.char_ngram_min, cfg.char_ngram_max), min_df=cfg.min_df,
                              max_features=cfg.max_features)
    return FeatureUnion([("word", tfidf_block(word)), ("char", tfidf_block(char))],
                        transformer_weights={"word": 1.0, "char": cfg.char_weight})


def tfidf_block(counter: BaseEstimator) -> Pipeline:
    """Counts -> sublinear tf-idf, l2-normalized per block (as TfidfVectorizer(sublinear_tf=True))."""
    return Pipeline([("counts", counter), ("tfidf", TfidfTransformer(sublinear_tf=True))])


def build_classifier(cfg: TfidfConfig, seed: int) -> NBLogisticRegression:
    """The linear head, configured from the tf-idf config."""
    return NBLogisticRegression(C=cfg.C, alpha=cfg.nb_alpha, nb_weighting=cfg.nb_weighting,
                                max_iter=cfg.max_iter, random_state=seed)


def build_baseline(cfg: TfidfConfig, seed: int) -> Pipeline:
    """The unfitted baseline: features -> NB-weighted logistic regression."""
    return Pipeline([("features", build_features(cfg)), ("clf", build_classifier(cfg, seed))])


class SklearnTextClassifier:
    """A fitted baseline pipeline behind the TextClassifier contract (str classes, list of texts)."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.classes_ = [str(c) for c in pipeline.classes_]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities in classes_ order; rows sum to 1."""
        texts = list(texts)
        if not texts:  # sklearn refuses 0-row input; a 0-row answer is the honest one
            return np.zeros((0, len(self.classes_)))
        return self.pipeline.predict_proba(texts)


def load_sklearn(folder: Path) -> SklearnTextClassifier:
    """Load a baseline folder written by save_sklearn (registered in textloop.pipeline.models.LOADERS)."""
    return SklearnTextClassifier(joblib.load(Path(folder) / MODEL_FILE))


def save_sklearn(pipeline: Pipeline, folder: Path, params: Params) -> None:
    """Write a fresh model folder: the pickled pipeline plus metadata that says how to load it."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    joblib.dump(pipeline, folder / MODEL_FILE)
    clean = {"strip_html": params.clean.strip_html, "lowercase": params.clean.lowercase}
    write_meta(folder, "sklearn", pipeline.classes_, {"train": params.train.model_dump(),
                                                       "clean": clean})


def score(proba_model: SklearnTextClassifier | Pipeline, frame: pd.DataFrame) -> dict[str, float]:
    """Accuracy and macro F1 of a fitted model on a labelled frame (NaN when the frame is empty)."""
    if frame.empty:
        log.warning("empty validation frame: val metrics are NaN")
        return {"accuracy": float("nan"), "f1_macro": float("nan")}
    if isinstance(proba_model, Pipeline):
        proba_model = SklearnTextClassifier(proba_model)
    proba = proba_model.predict_proba(texts_of(frame))
    return metrics_from_proba(proba_model.classes_, proba, labels_of(frame))


def metrics_from_proba(classes: Sequence[str], proba: np.ndarray,
                       truth: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro F1 (over the labels present in truth or predictions)."""
    pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    truth = np.asarray(truth, dtype=object)
    return {"accuracy": float(accuracy_score(truth, pred)),
            "f1_macro": float(f1_score(truth, pred, average="macro", zero_division=0))}


def texts_of(frame: pd.DataFrame) -> list[str]:
    """The text column as a list of str."""
    return frame["text"].astype(str).tolist()


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """The label column as str (classes_ are always strings)."""
    return frame["label"].astype(str).to_numpy()


def train_model(train: pd.DataFrame, val: pd.DataFrame, params: Params, out_dir: Path,
                on_metric: MetricCallback | None = None,
                checkpoint_dir: Path | None = None) -> dict[str, float]:
    """Fit per params.train.model, write out_dir, and return val metrics + fit time
    (checkpoint_dir: where a transformer run checkpoints and resumes)."""
    if params.train.model != "tfidf":
        from tasks.transformer import train_transformer  # lazy: the baseline never imports torch

        return train_transformer(train, val, params, out_dir, on_metric=on_metric,
                                 checkpoint_dir=checkpoint_dir)
    start = time.perf_counter()
    pipeline = build_baseline(params.train.tfidf, params.train.seed)
    pipeline.fit(texts_of(train), labels_of(train))
    seconds = time.perf_counter() - start
    log.info("baseline fitted on %d rows in %.1fs", len(train), seconds)
    metrics = {**score(pipeline, val), "train_seconds": seconds, "n_train": len(train)}
    save_sklearn(pipeline, out_dir, params)
    if on_metric is not None:
        for name, value in metrics.items():
            on_metric(name, float(value), None)
    log.info("val accuracy %.4f, macro F1 %.4f", metrics["accuracy"], metrics["f1_macro"])
    return metrics
