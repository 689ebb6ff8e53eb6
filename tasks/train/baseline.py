"""train: fit the CPU baseline (word + char tf-idf -> NB-weighted logistic regression), or delegate
to the transformer trainer; write a self-describing model folder, and (baseline) the fitted
features' train/val matrices that optimize reuses instead of vectorizing the corpus again."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import log_expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.utils.sparsefuncs import inplace_column_scale
from sklearn.utils.validation import check_is_fitted, validate_data

from tasks.clean.redact import model_meta
from tasks.train.ngrams import CharWbNgramCounter, WordNgramCounter, make_counters
from textloop.core.config import Params, TfidfConfig
from textloop.core.estimator_state import FORMAT, save_estimator, sklearn_types
from textloop.core.model import load_estimator, write_meta

log = logging.getLogger(__name__)

FEATURES_MANIFEST = "features.json"
BLOCKS = ("word", "char")  # the feature blocks, in column order

MetricCallback = Callable[[str, float, "int | None"], None]


LIBLINEAR_LOCK = threading.Lock()  # liblinear's random generator is one per process: see _fit_binary


class NBLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression on Naive-Bayes log-count-ratio scaled features (NB-LR, Wang & Manning
    2012); one-vs-rest with per-class ratios when there are more than two classes."""

    tol = 1e-4  # models pickled before these were parameters load with what they were fit with
    dual_feature_ratio = float("inf")

    def __init__(self, C: float = 4.0, alpha: float = 1.0, nb_weighting: bool = True,
                 max_iter: int = 1000, random_state: int | None = None,
                 tol: float | None = None, dual_feature_ratio: float = float("inf")):
        self.C = C
        self.alpha = alpha
        self.nb_weighting = nb_weighting
        self.max_iter = max_iter
        self.random_state = random_state
        self.tol = tol  # liblinear's stopping tolerance; None: its own default (liblinear_tol)
        self.dual_feature_ratio = dual_feature_ratio  # dual solver when features >= this x rows

    def fit(self, X, y) -> NBLogisticRegression:
        """Fit one binary model per ratio row; the ratio is folded into coef_ so predicting is X @ coef."""
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float32, np.float64])
        return self.fit_prepared(X, np.ones(X.shape[1], dtype=X.dtype), nb_stats(X, y))

    def fit_prepared(self, X0: sp.csr_matrix, col_weight: np.ndarray,
                     stats: NBStats, overwrite: bool = False) -> NBLogisticRegression:
        """fit() on X = X0 scaled by col_weight per column, from presence counts computed once
        (nb_stats of X0: scaling by a positive weight keeps presence): what optimize's trials
        share, so a trial that changes only C, alpha or a block weight scales one copy of X0
        instead of stacking, binarizing and scaling it again. overwrite: X0's values are the
        caller's to spend; a binary fit on float64 X0 scales them in place instead of into a
        float64 copy (the fit's peak of memory is X0, that copy and liblinear's own copy:
        with train's float32 values widened in place of a copy, IMDb's 41M stored values take
        166 MB less). The same model either way."""
        self.classes_ = stats.classes
        self.n_features_in_ = X0.shape[1]
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 classes to train, got {list(self.classes_)}")
        targets = [1] if len(self.classes_) == 2 else range(len(self.classes_))
        X0 = sp.csr_matrix(X0)  # no copy when X0 is CSR already
        # liblinear's fit sorts its matrix's column indices in place, and `scaled` shares them
        # with X0: sorted first (each value moves with its index, on the caller's arrays too),
        # X0 keeps every value on its own column for the next class or the next trial
        X0.sort_indices()
        if overwrite and len(targets) == 1 and X0.dtype == np.float64:
            scaled = X0  # scale_columns_into writes each value over the one it is computed from
        else:  # float64 values on X0's index arrays, reused per class
            scaled = sp.csr_matrix((np.empty(X0.nnz, dtype=np.float64), X0.indices, X0.indptr),
                                   shape=X0.shape)
        fitted = [self._fit_binary(X0, scaled, col_weight, stats, k) for k in targets]
        self.coef_ = np.vstack([c for c, _ in fitted]).astype(np.float32)  # half the size on disk
        self.intercept_ = np.array([b for _, b in fitted])
        return self

    def _fit_binary(self, X0: sp.csr_matrix, scaled: sp.csr_matrix, col_weight: np.ndarray,
                    stats: NBStats, k: int) -> tuple[np.ndarray, float]:
        """Class k against the rest on ratio-scaled features (written into `scaled`, which
        shares X0's index arrays); returns the weights of X's space."""
        ratio = (stats.log_ratio(k, self.alpha) if self.nb_weighting
                 else np.ones(X0.shape[1], dtype=X0.dtype))
        dual = uses_dual(X0.shape[1], X0.shape[0], self.C, self.dual_feature_ratio)
        lr = LogisticRegression(C=self.C, solver="liblinear", dual=dual, max_iter=self.max_iter,
                                tol=liblinear_tol(self.tol, dual), random_state=self.random_state)
        # scaled straight into float64, the only dtype liblinear takes: one copy of X0's values
        # (not of its indices), reused by every class
        X = scale_columns_into(scaled, X0, col_weight.astype(np.float64) * ratio)
        # liblinear draws the dual solver's coordinate order from one process-wide generator,
        # seeded at each fit: two fits at once in threads (optimize's parallel trials) would
        # interleave its draws and give a different model for the same seed
        with LIBLINEAR_LOCK:
            lr.fit(X, (stats.y_idx == k).astype(int))
        return lr.coef_.ravel() * ratio, float(lr.intercept_[0])

    def decision_function(self, X) -> np.ndarray:
        """Per-model logits: shape (n,) for binary, (n, n_classes) otherwise."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float32, np.float64], reset=False)
        scores = np.asarray(X @ self.coef_.T, dtype=np.float64) + self.intercept_
        return scores.ravel() if len(self.classes_) == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        """Binary: the sigmoid. Multi-class: one-vs-rest sigmoids normalized to sum to 1 (in log space)."""
        return self.proba_from_scores(self.decision_function(X))

    def proba_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """predict_proba from decision_function's logits (shape (n,) binary, (n, k) else)."""
        if len(self.classes_) == 2:
            return np.column_stack([np.exp(log_expit(-scores)), np.exp(log_expit(scores))])
        logp = log_expit(scores)
        p = np.exp(logp - logp.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable class label."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


DUAL_REFERENCE_C = 16.0  # the C at which train.tfidf.dual_feature_ratio is the plain threshold


def uses_dual(n_features: int, n_rows: int, C: float, ratio: float) -> bool:
    """Whether liblinear's dual solver fits faster than its primal Newton solver: when
    features >= ratio x rows x C / 16. The dual's time grows with C (its iterations), the
    primal's with rows, so the threshold scales with C. Measured per class on NB-scaled
    tf-idf: 3-class tweets (28k rows, 212k features, 7.5x) dual vs primal CPU s: C 4 2.2 vs
    5.5, C 16 7.1 vs 9.0, C 64 26.1 vs 15.0 (C 128: 27 vs 12); IMDb (22k rows, 1.05M, 47x):
    C 16 6.2 vs 13.5, C 35.8 9.4 vs 13. Both reach the same optimum (same val accuracy)."""
    return n_features >= ratio * n_rows * C / DUAL_REFERENCE_C


LIBLINEAR_DEFAULT_TOL = {True: 0.1, False: 0.01}  # liblinear's own -e for L2 LR: dual, primal


def liblinear_tol(tol: float | None, dual: bool) -> float:
    """The stopping tolerance a fit passes to liblinear: `tol`, or when None liblinear's own
    default for the solver (dual coordinate descent 0.1, primal trust-region Newton 0.01;
    scikit-learn's 1e-4 is 1000x / 100x tighter). Measured on NB-scaled tf-idf, CPU s of
    the whole fit at 1e-4 vs the default: IMDb dual C 16 9.9 vs 5.1, 3-class tweets dual
    C 16 19.0 vs 8.0 (the same val predictions), tweets primal C 64 48.6 vs 27.3 (val
    accuracy 0.7701 vs 0.7730)."""
    return LIBLINEAR_DEFAULT_TOL[dual] if tol is None else tol


def scale_columns(X: sp.csr_matrix | np.ndarray, factor: np.ndarray,
                  dtype: type | None = None) -> sp.csr_matrix | np.ndarray:
    """A copy of X (as dtype, default X's) with column j multiplied by factor[j]: the same values
    as X @ diags(factor), without a sparse matrix product and its re-sort (a quarter of an NB-LR
    fit on IMDb)."""
    dtype = X.dtype if dtype is None else dtype
    if not sp.issparse(X):
        return X.astype(dtype) * factor.astype(dtype)
    scaled = X.astype(dtype, copy=True)
    inplace_column_scale(scaled, factor.astype(dtype, copy=False))
    return scaled


SCALE_CHUNK = 1 << 22  # stored values per step of an in-place pass: a bounded temporary


def value_chunks(nnz: int) -> Iterator[slice]:
    """Slices of a sparse matrix's stored values, SCALE_CHUNK at a time, for passes over them
    whose temporaries must stay bounded whatever the corpus size."""
    return (slice(start, start + SCALE_CHUNK) for start in range(0, nnz, SCALE_CHUNK))


def scale_columns_into(out: sp.csr_matrix, X: sp.csr_matrix, factor: np.ndarray) -> sp.csr_matrix:
    """out (a CSR matrix on X's index arrays) with its values set to X's with column j
    multiplied by factor[j] (in out's dtype): what scale_columns(X, factor, out.dtype) gives,
    bit for bit, without a copy of X's index arrays or a corpus-sized temporary (IMDb's
    41M stored values: 166 MB of indices, 330 MB of gathered factors). Returns out."""
    for part in value_chunks(X.nnz):
        np.multiply(X.data[part], factor.take(X.indices[part]), out=out.data[part],
                    dtype=out.dtype)
    return out


@dataclass
class NBStats:
    """Per class, in how many training rows of each class every column is non-zero (and in
    how many of the other classes'): the Naive-Bayes ratios for any smoothing alpha."""

    classes: np.ndarray
    y_idx: np.ndarray  # the class index of each training row
    pos: np.ndarray  # (n_classes, n_features)
    total: np.ndarray  # (n_features,) rows in which each column is non-zero

    def log_ratio(self, k: int, alpha: float) -> np.ndarray:
        """Smoothed log-count ratio r = log((p/|p|) / (q/|q|)) of class k against the rest."""
        pos = alpha + self.pos[k]
        neg = alpha + (self.total - self.pos[k])
        return np.log((pos / pos.sum()) / (neg / neg.sum())).astype(np.float32)


def nb_stats(X: sp.spmatrix, y: Sequence) -> NBStats:
    """Presence counts per class of X (NB ratios from presence beat ratios from tf-idf mass)."""
    classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
    X = sp.csr_matrix(X)  # no copy when X is CSR already
    present = sp.csr_matrix(((X.data != 0).astype(np.float32), X.indices, X.indptr),
                            shape=X.shape)  # counts < 2**24: exact; X's index arrays, shared
    onehot = sp.csr_matrix((np.ones(len(y_idx), dtype=np.float32), (y_idx, np.arange(len(y_idx)))),
                           shape=(len(classes), len(y_idx)))
    pos = np.asarray((onehot @ present).todense(), dtype=np.float64)
    return NBStats(classes, y_idx, pos, pos.sum(axis=0))


def lr_row_mask(frame: pd.DataFrame, use: str) -> np.ndarray | None:
    """label.pseudo.use's rule for which train rows the baseline's logistic regression is fitted
    on: with `nb_ratios`, every row but the pseudo-labelled ones (label_origin pseudo, boolean
    mask of len(frame)); None (all rows: the plain fit) with `rows` or when no row is pseudo, so
    those paths fit exactly as before. Raises ValueError for another `use`."""
    from textloop.core.splits import label_origins

    if use not in ("rows", "nb_ratios"):
        raise ValueError(f"label.pseudo.use must be rows or nb_ratios, got {use!r}")
    pseudo = (label_origins(frame) == "pseudo").to_numpy()
    return ~pseudo if use == "nb_ratios" and pseudo.any() else None


def fit_nb_lr(clf: NBLogisticRegression, X0: sp.csr_matrix, y: Sequence,
              lr_rows: np.ndarray | None = None, col_weight: np.ndarray | None = None,
              stats: NBStats | None = None, overwrite: bool = False) -> NBLogisticRegression:
    """The one NB-LR fit of train, every optimize trial and finalist, and pseudo_nb_fit: the
    Naive-Bayes ratios count ALL n rows of X0 (n, d) with labels y (n) (`stats`: their presence
    counts when the caller already has them), the logistic regression is fitted on the rows
    `lr_rows` only (indices; None: all rows), on X0 scaled per column by col_weight (None: 1).

    Why: pseudo-labelled rows help the baseline only as NB statistics, never as rows that set
    the LR weights (IMDb at 1,200 gold labels: README "Label quality"). With lr_rows, stats and
    col_weight all None this is clf.fit(X0, y), byte for byte; overwrite (X0's values are the
    caller's to spend: see fit_prepared) fits the same model. Raises ValueError when the fitted
    rows hold fewer than 2 classes (liblinear's)."""
    if lr_rows is None and stats is None and col_weight is None and not overwrite:
        return clf.fit(X0, y)
    X0 = sp.csr_matrix(X0)
    stats = nb_stats(X0, y) if stats is None else stats
    if lr_rows is not None:
        lr_rows = np.asarray(lr_rows, dtype=int)
        X0, stats = X0[lr_rows], NBStats(stats.classes, stats.y_idx[lr_rows], stats.pos,
                                         stats.total)
    weight = np.ones(X0.shape[1], dtype=X0.dtype) if col_weight is None else col_weight
    return clf.fit_prepared(X0, weight, stats, overwrite)


def with_float64_values(X: sp.csr_matrix) -> sp.csr_matrix:
    """X with its values converted to float64, liblinear's only dtype (exactly: float32 values
    widen without rounding), on X's own index arrays: what a fit with overwrite=True scales in
    place. The caller drops X, so its float32 values are freed before the fit. X's indices are
    sorted first: the fit would sort the shared indices in place, leaving X's own values on
    other columns."""
    X.sort_indices()
    return sp.csr_matrix((X.data.astype(np.float64), X.indices, X.indptr), shape=X.shape)


def feature_union(blocks: dict[str, BaseEstimator], char_weight: float) -> FeatureUnion:
    """The word and char tf-idf blocks side by side, the char block scaled by char_weight."""
    return FeatureUnion([(k, blocks[k]) for k in BLOCKS],
                        transformer_weights={"word": 1.0, "char": char_weight})


def stack(mats: dict[str, sp.csr_matrix], char_weight: float) -> sp.csr_matrix:
    """What feature_union(...).transform gives, from per-block matrices: (n_docs, word + char).
    The char columns are weighted in place in the stacked matrix (the same float products as
    `char * weight`) instead of in a weighted copy of the char block first (IMDb: 280 MB)."""
    X = sp.hstack([mats["word"], mats["char"]], format="csr")  # word: weight 1
    if char_weight != 1.0:
        width = mats["word"].shape[1]
        for part in value_chunks(X.nnz):
            values = X.data[part]  # a view: weighted in place
            values[X.indices[part] >= width] *= X.data.dtype.type(char_weight)
    return X


def build_features(cfg: TfidfConfig) -> FeatureUnion:
    """Word 1..n-gram tf-idf plus char_wb n-gram tf-idf (so text without spaces still has features);
    cfg.vectorizer picks our counters or scikit-learn's CountVectorizer."""
    blocks = {k: tfidf_block(c) for k, c in make_counters(cfg).items()}
    return feature_union(blocks, cfg.char_weight)


def tfidf_block(counter: BaseEstimator) -> Pipeline:
    """Counts -> sublinear tf-idf, l2-normalized per block (as TfidfVectorizer(sublinear_tf=True))."""
    return Pipeline([("counts", counter), ("tfidf", TfidfTransformer(sublinear_tf=True))])


def build_classifier(cfg: TfidfConfig, seed: int) -> NBLogisticRegression:
    """The linear head, configured from the tf-idf config."""
    return NBLogisticRegression(C=cfg.C, alpha=cfg.nb_alpha, nb_weighting=cfg.nb_weighting,
                                max_iter=cfg.max_iter, random_state=seed, tol=cfg.tol,
                                dual_feature_ratio=cfg.dual_feature_ratio)


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
        parts = linear_blocks(self.pipeline)
        if parts is None:
            return self.pipeline.predict_proba(texts)
        return parts[1].proba_from_scores(blockwise_scores(*parts, texts))

    def explain(self, text: str, top_k: int = 10, target: str | None = None,
                **_: Any) -> dict[str, Any]:
        """Exact per-n-gram contributions to a class's logit (tasks.train.explain_linear); spans index `text`."""
        from tasks.train.explain_linear import LinearExplainer

        if getattr(self, "_explainer", None) is None:  # vocabularies built once, on first use
            self._explainer = LinearExplainer(self.pipeline)
        return self._explainer.explain(text, top_k=top_k, target=target)


def linear_blocks(pipeline: Pipeline) -> tuple[list[tuple[Any, float]], NBLogisticRegression] | None:
    """The baseline's feature blocks with their weights and its NB-LR head, when the pipeline is
    exactly a FeatureUnion then an NBLogisticRegression (None otherwise: predict as a Pipeline)."""
    if len(pipeline.steps) != 2:
        return None
    union, clf = pipeline.steps[0][1], pipeline.steps[1][1]
    if not isinstance(union, FeatureUnion) or not isinstance(clf, NBLogisticRegression):
        return None
    weights = union.transformer_weights or {}
    blocks = [(block, float(weights.get(name, 1.0))) for name, block in union.transformer_list]
    if any(block in ("drop", "passthrough") for block, _ in blocks):
        return None
    return blocks, clf


def blockwise_scores(blocks: list[tuple[Any, float]], clf: NBLogisticRegression,
                     texts: list[str]) -> np.ndarray:
    """clf.decision_function of the FeatureUnion's output without building it: each block's
    matrix times its slice of the weights, scaled by the block weight, summed. Saves stacking
    (and copying the char block to scale it) every predicted batch: 25k IMDb reviews are about
    30M non-zeros. The blocks transform side by side under joblib's parallel_config, as
    FeatureUnion.transform does. Raises ValueError when the widths do not match the head."""
    from joblib import Parallel, delayed

    if len(texts) == 1:  # one text: a worker pool's dispatch would cost more than the work
        mats = [block_transform(block, texts) for block, _ in blocks]
    else:
        mats = Parallel()(delayed(block_transform)(block, texts) for block, _ in blocks)
    width = sum(m.shape[1] for m in mats)
    if width != clf.coef_.shape[1]:
        raise ValueError(f"X has {width} features, but the classifier expects {clf.coef_.shape[1]}")
    scores = np.zeros((len(texts), clf.coef_.shape[0]), dtype=np.float64)
    start = 0
    for X, (_, weight) in zip(mats, blocks):
        part = np.asarray(X @ clf.coef_[:, start:start + X.shape[1]].T, dtype=np.float64)
        scores += part * weight if weight != 1.0 else part
        start += X.shape[1]
    scores += clf.intercept_
    return scores.ravel() if len(clf.classes_) == 2 else scores


def block_transform(block: Any, texts: list[str]) -> sp.csr_matrix:
    """block.transform(texts), with a counts -> TfidfTransformer block's tf-idf step done here:
    the same operations on the fresh count matrix (sublinear tf, idf, sklearn's own l2 row
    normalisation), without TfidfTransformer.transform's input validation and copy, which cost
    a single-text request more than its arithmetic. Any other block: its own transform."""
    from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

    steps = getattr(block, "steps", None)
    if not (isinstance(block, Pipeline) and len(steps) == 2
            and type(steps[0][1]) in (WordNgramCounter, CharWbNgramCounter, CountVectorizer)
            and type(steps[1][1]) is TfidfTransformer and steps[1][1].norm in ("l2", None)):
        return block.transform(texts)
    tfidf = steps[1][1]
    X = steps[0][1].transform(texts)  # these counters return a new matrix: scaled in place
    if not sp.issparse(X) or X.format != "csr" or X.dtype not in (np.float32, np.float64):
        X = sp.csr_matrix(X, dtype=X.dtype if X.dtype in (np.float32, np.float64) else np.float64)
    if tfidf.sublinear_tf:
        np.log(X.data, X.data)
        X.data += 1.0
    if hasattr(tfidf, "idf_"):
        X.data *= tfidf.idf_[X.indices]
    if tfidf.norm == "l2":
        inplace_csr_row_normalize_l2(X)
    return X


def model_types() -> dict[str, type]:
    """Stable name -> class of everything a saved baseline may hold: the names are what the
    model files record, so moving a class to another module changes only this table."""
    return {**sklearn_types(), "nb_logistic_regression": NBLogisticRegression,
            "word_ngram_counter": WordNgramCounter, "char_wb_ngram_counter": CharWbNgramCounter}


def load_sklearn(folder: Path) -> SklearnTextClassifier:
    """Load a baseline folder written by save_sklearn, or by the pickling code before it
    (registered in textloop.pipeline.models.LOADERS)."""
    return SklearnTextClassifier(load_estimator(Path(folder), model_types()))


def save_sklearn(pipeline: Pipeline, folder: Path, params: Params) -> None:
    """Write a fresh model folder: the pipeline as a JSON description and arrays (no pickle),
    plus metadata that says how to load it."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_estimator(pipeline, folder, model_types())
    clean = {"strip_html": params.clean.strip_html, "lowercase": params.clean.lowercase}
    write_meta(folder, "sklearn", pipeline.classes_, {"format": FORMAT,
                                                       "train": params.train.model_dump(),
                                                       "clean": clean,
                                                       **model_meta(params.clean.redact)})
    write_global_view(pipeline, folder, params.explain.global_top_k)


def write_global_view(pipeline: Pipeline, folder: Path, top_k: int) -> None:
    """The top n-grams per class (tasks.train.explain_linear.global_view) as a file inside the model folder,
    so it is logged and registered with the model and shown for every version."""
    from tasks.train.explain_linear import ExplainUnsupported, global_view
    from textloop.core.model import GLOBAL_FILE

    try:
        view = global_view(pipeline, top_k)
    except ExplainUnsupported as exc:
        log.warning("no global explanation for this model: %s", exc)
        return
    (Path(folder) / GLOBAL_FILE).write_text(json.dumps(view, indent=1) + "\n", encoding="utf-8")


def score(proba_model: SklearnTextClassifier | Pipeline, frame: pd.DataFrame) -> dict[str, float]:
    """Accuracy and macro F1 of a fitted model on a labelled frame (NaN when the frame is empty)."""
    if frame.empty:
        log.warning("empty validation frame: val metrics are NaN")
        return {"accuracy": float("nan"), "f1_macro": float("nan")}
    if isinstance(proba_model, Pipeline):
        proba_model = SklearnTextClassifier(proba_model)
    proba = proba_model.predict_proba(texts_of(frame))
    return metrics_from_proba(proba_model.classes_, proba, labels_of(frame))


def score_features(clf: NBLogisticRegression, X: sp.csr_matrix,
                   truth: Sequence[str]) -> dict[str, float]:
    """score() on already-vectorized rows: the same numbers without transforming the texts again."""
    if X.shape[0] == 0:
        log.warning("empty validation frame: val metrics are NaN")
        return {"accuracy": float("nan"), "f1_macro": float("nan")}
    return metrics_from_proba([str(c) for c in clf.classes_], clf.predict_proba(X), truth)


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


# --- the fitted features train hands to optimize (paths.features)

@dataclass
class FittedFeatures:
    """Fitted tf-idf blocks and their unweighted per-block train/val matrices (cfg: the settings
    they were fitted with): what optimize's trials reuse instead of vectorizing again."""

    cfg: TfidfConfig
    blocks: dict[str, Pipeline]
    train: dict[str, sp.csr_matrix]
    val: dict[str, sp.csr_matrix]


def texts_digest(train_texts: Sequence[str], val_texts: Sequence[str]) -> str:
    """sha256 of the train and val texts in order: ties saved matrices to the rows they encode."""
    h = hashlib.sha256()
    for split in (train_texts, val_texts):
        h.update(f"{len(split)}\n".encode())
        for text in split:
            h.update(text.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()


def fit_block(block: Pipeline, train_texts: list[str],
              val_texts: list[str]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Fit one block on the train texts and return its (train, val) matrices, with sorted indices
    (scikit-learn would otherwise sort a copy of the stacked matrix at every classifier fit)."""
    train = block.fit_transform(train_texts).tocsr()
    val = (block.transform(val_texts).tocsr() if val_texts
           else sp.csr_matrix((0, train.shape[1]), dtype=train.dtype))
    for mat in (train, val):
        mat.sort_indices()
    return train, val


# train characters above which the blocks are fitted one after the other: counting holds
# about 40 bytes per character of temporaries per block (IMDb's 29M characters: the train
# process peaked at 2.37 GB with both blocks at once, 1.49 GB one at a time; same CPU seconds)
SIDE_BY_SIDE_MAX_CHARS = 8_000_000


def fit_features(cfg: TfidfConfig, train_texts: list[str],
                 val_texts: list[str]) -> FittedFeatures:
    """Fit each block on the train texts and transform the val texts with it; the blocks are
    independent, so on a corpus of up to SIDE_BY_SIDE_MAX_CHARS characters they are fitted
    side by side in two threads (the counting's numpy and scipy steps release the GIL), on a
    bigger one one after the other (the peak of memory is one block's counting, not two)."""
    from concurrent.futures import ThreadPoolExecutor

    blocks = {k: tfidf_block(c) for k, c in make_counters(cfg).items()}
    side_by_side = sum(map(len, train_texts)) <= SIDE_BY_SIDE_MAX_CHARS
    with ThreadPoolExecutor(len(blocks) if side_by_side else 1, thread_name_prefix="block") as pool:
        futures = {k: pool.submit(fit_block, b, train_texts, val_texts) for k, b in blocks.items()}
        fitted = {k: f.result() for k, f in futures.items()}
    return FittedFeatures(cfg, blocks, {k: f[0] for k, f in fitted.items()},
                          {k: f[1] for k, f in fitted.items()})


def save_features(folder: Path, features: FittedFeatures | None, digest: str) -> None:
    """Write the per-block matrices (uncompressed .npz: loading beats re-vectorizing by far) and a
    manifest; features=None writes a manifest saying there is nothing to reuse (transformers).
    The fitted blocks are not duplicated here: they are inside the train model folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if features is None:
        (folder / FEATURES_MANIFEST).write_text(json.dumps({"reusable": False}) + "\n")
        return
    for split in ("train", "val"):
        for kind, mat in getattr(features, split).items():
            sp.save_npz(folder / f"{split}_{kind}.npz", mat, compressed=False)
    manifest = {"reusable": True, "digest": digest, "cfg": features.cfg.model_dump()}
    (folder / FEATURES_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def load_features(folder: Path, model: Pipeline, model_cfg: TfidfConfig,
                  digest: str) -> FittedFeatures | None:
    """The features train saved, with the fitted blocks taken from its model; None (logged) when
    there are none or they encode other rows or other settings than this model's."""
    path = Path(folder) / FEATURES_MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {"reusable": False}
    if not manifest["reusable"]:
        log.info("%s: no fitted features to reuse", folder)
        return None
    if manifest["digest"] != digest or TfidfConfig.model_validate(manifest["cfg"]) != model_cfg:
        log.warning("%s: fitted features are for other rows or settings: not reused", folder)
        return None
    blocks = dict(model.named_steps["features"].transformer_list)
    mats = {split: {k: sp.load_npz(Path(folder) / f"{split}_{k}.npz").tocsr() for k in BLOCKS}
            for split in ("train", "val")}
    return FittedFeatures(model_cfg, blocks, mats["train"], mats["val"])


def _save_features_meanwhile(folder: Path, features: FittedFeatures, texts: list[str],
                             val_texts: list[str]) -> Any:
    """save_features in a background thread (a Future): the matrices (IMDb: 350 MB) are
    hashed and written while the train blocks are stacked for the classifier; they are only
    read, by both. The caller waits for it before fitting, so the per-block train matrices can
    be freed first (liblinear's copy of the data is the stage's peak of memory)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="save-features")
    future = pool.submit(lambda: save_features(folder, features, texts_digest(texts, val_texts)))
    pool.shutdown(wait=False)  # the thread ends with its one task
    return future
