"""optimize: tune the baseline with optuna on the val split, reusing the feature blocks the train
stage fitted (and any refitted ones across trials), and keep the better of the best trial and the
train-stage model."""

from __future__ import annotations

import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.pipeline import FeatureUnion, Pipeline

from tasks.search_space import Dim, parse_space, suggest
from tasks.train import (
    BLOCKS,
    FittedFeatures,
    NBLogisticRegression,
    NBStats,
    build_classifier,
    build_features,
    feature_union,
    fit_block,
    labels_of,
    load_features,
    load_sklearn,
    metrics_from_proba,
    nb_stats,
    save_sklearn,
    scale_columns,
    score,
    score_features,
    stack,
    texts_digest,
    texts_of,
)
from textloop.core.config import Params, TfidfConfig
from textloop.core.model import read_meta

log = logging.getLogger(__name__)

TrialCallback = Callable[[int, dict, dict], None]
# which TfidfConfig fields each fitted feature block depends on (the rest only touch the classifier)
BLOCK_KEYS = {
    "word": ("word_ngram_max", "min_df", "max_features", "vectorizer"),
    "char": ("char_ngram_min", "char_ngram_max", "min_df", "max_features", "vectorizer"),
}
MAX_CACHED_BLOCKS = 2  # per block kind: an IMDb char block is a few hundred MB


def block_key(kind: str, cfg: TfidfConfig) -> tuple:
    """The cache key of a fitted block: its kind and the settings it depends on."""
    return (kind,) + tuple(getattr(cfg, k) for k in BLOCK_KEYS[kind])


class BlockCache:
    """Fitted feature blocks with their train/val matrices, keyed by the settings they depend on,
    so trials that only change the classifier never vectorize again. Seeded with the blocks the
    train stage fitted, trials with train's block settings never vectorize at all."""

    def __init__(self, train_texts: list[str], val_texts: list[str],
                 seed: FittedFeatures | None = None):
        self.train_texts, self.val_texts = train_texts, val_texts
        self._stacked: tuple[tuple, sp.csr_matrix, NBStats] | None = None
        self._store: OrderedDict[tuple, tuple[Pipeline, sp.csr_matrix, sp.csr_matrix]] = OrderedDict()
        for kind in BLOCKS if seed is not None else ():
            self._store[block_key(kind, seed.cfg)] = (seed.blocks[kind], seed.train[kind],
                                                      seed.val[kind])

    def get(self, kind: str, cfg: TfidfConfig) -> tuple[Pipeline, sp.csr_matrix, sp.csr_matrix]:
        """A fitted block and its (train, val) matrices, fitting it on a miss."""
        key = block_key(kind, cfg)
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        start = time.perf_counter()
        block = dict(build_features(cfg).transformer_list)[kind]
        entry = (block, *fit_block(block, self.train_texts, self.val_texts))
        log.info("fitted %s block %s in %.1fs", kind, key[1:], time.perf_counter() - start)
        self._evict(kind)
        self._store[key] = entry
        return entry

    def _evict(self, kind: str) -> None:
        """Drop the least recently used blocks of a kind beyond the cap (memory, not speed)."""
        same = [k for k in self._store if k[0] == kind]
        for key in same[: max(0, len(same) - MAX_CACHED_BLOCKS + 1)]:
            del self._store[key]

    def prepared(self, cfg: TfidfConfig, y_train: np.ndarray) -> Prepared:
        """What a trial with cfg fits on: the unweighted train blocks side by side and their NB
        counts, shared by every trial with the same blocks (built once: stacking, binarizing
        and counting a wide IMDb matrix is seconds per trial), the per-column block weights
        (word 1, char cfg.char_weight), the weighted val matrix and the fitted FeatureUnion."""
        fitted = {kind: self.get(kind, cfg) for kind in BLOCKS}
        key = tuple(block_key(kind, cfg) for kind in BLOCKS)
        if self._stacked is None or self._stacked[0] != key:
            self._stacked = None  # free the old one first: it is the size of the corpus
            X0 = stack({k: f[1] for k, f in fitted.items()}, 1.0)
            self._stacked = (key, X0, nb_stats(X0, y_train))
        _, X0, stats = self._stacked
        w = cfg.char_weight
        col_weight = np.concatenate([np.ones(fitted["word"][1].shape[1], dtype=X0.dtype),
                                     np.full(fitted["char"][1].shape[1], w, dtype=X0.dtype)])
        return Prepared(X0, stats, col_weight, stack({k: f[2] for k, f in fitted.items()}, w),
                        feature_union({k: f[0] for k, f in fitted.items()}, w))

    def features(self, cfg: TfidfConfig) -> tuple[sp.csr_matrix, sp.csr_matrix, FeatureUnion]:
        """Weighted train/val matrices for cfg and the fitted FeatureUnion that produces them."""
        fitted = {kind: self.get(kind, cfg) for kind in BLOCKS}
        w = cfg.char_weight
        return (stack({k: f[1] for k, f in fitted.items()}, w),
                stack({k: f[2] for k, f in fitted.items()}, w),
                feature_union({k: f[0] for k, f in fitted.items()}, w))


@dataclass
class Prepared:
    """One trial's inputs (BlockCache.prepared)."""

    X0: sp.csr_matrix
    stats: NBStats
    col_weight: np.ndarray
    X_val: sp.csr_matrix
    union: FeatureUnion


@dataclass
class Best:
    """The best trial so far, with the fitted pieces needed to save it without refitting."""

    score: float = -np.inf
    values: dict | None = None
    cfg: TfidfConfig | None = None
    union: FeatureUnion | None = None
    clf: NBLogisticRegression | None = None


class Search:
    """One optuna study over the baseline: the objective plus what it remembers between trials."""

    def __init__(self, train: pd.DataFrame, val: pd.DataFrame, params: Params, dims: list[Dim],
                 on_trial: TrialCallback | None, seed: FittedFeatures | None = None):
        self.params, self.dims, self.on_trial = params, dims, on_trial
        self.cache = BlockCache(texts_of(train), texts_of(val), seed)
        self.y_train, self.y_val = labels_of(train), labels_of(val)
        self.best = Best()
        self.trials: list[dict] = []

    def objective(self, trial: Any) -> float:
        """Fit one sampled config on train, score it on val with the gate metric."""
        return self.record(trial, *self.fit(*self.sample(trial)))

    def sample(self, trial: Any) -> tuple[dict, TfidfConfig, Prepared]:
        """A trial's config and inputs (touches the block cache: call from one thread)."""
        values, cfg = suggest(trial, self.dims, self.params.train.tfidf)
        return values, cfg, self.cache.prepared(cfg, self.y_train)

    def fit(self, values: dict, cfg: TfidfConfig, prep: Prepared
            ) -> tuple[dict, TfidfConfig, Prepared, NBLogisticRegression, dict, float]:
        """Fit and score one trial; reads shared inputs only, so trials may fit in parallel
        threads (liblinear releases the GIL)."""
        start = time.perf_counter()
        clf = build_classifier(cfg, self.params.train.seed)
        if cfg.char_weight > 0:
            clf.fit_prepared(prep.X0, prep.col_weight, prep.stats)
        else:  # a zero weight empties the char block: its presence counts must go too
            clf.fit(scale_columns(prep.X0, prep.col_weight), self.y_train)
        metrics = metrics_from_proba(list(clf.classes_), clf.predict_proba(prep.X_val), self.y_val)
        return values, cfg, prep, clf, metrics, time.perf_counter() - start

    def record(self, trial: Any, values: dict, cfg: TfidfConfig, prep: Prepared,
               clf: NBLogisticRegression, metrics: dict, seconds: float) -> float:
        """Keep a fitted trial: its row in the report, the best so far, the callback."""
        value = metrics[self.params.evaluate.gate_metric]
        self.trials.append({"number": trial.number, "params": values, **metrics,
                            "seconds": round(seconds, 2)})
        log.info("trial %d %s -> %s %.4f", trial.number, values, self.params.evaluate.gate_metric,
                 value)
        if value > self.best.score:
            self.best = Best(value, values, cfg, prep.union, clf)
        if self.on_trial is not None:
            self.on_trial(trial.number, values, metrics)
        return value


def run_study(search: Search, n_trials: int, timeout_s: float, seed: int,
              parallel: int = 1) -> None:
    """Seeded TPE search; optuna's per-trial INFO lines are silenced (we log our own).
    parallel > 1: trials are asked for in batches of that size, fitted in threads and told in
    order, so the same seed gives the same trials (the TPE sampler's first 10 are its seeded
    random draws either way)."""
    import optuna  # local: only this stage needs it

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seed))
        if parallel <= 1:
            study.optimize(search.objective, n_trials=n_trials, timeout=timeout_s)
        else:
            _batched(study, search, n_trials, timeout_s, parallel)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _batched(study: Any, search: Search, n_trials: int, timeout_s: float, parallel: int) -> None:
    """Ask up to `parallel` trials, fit them in threads, record and tell them in trial order;
    no new batch starts after timeout_s (as optuna's own timeout)."""
    from concurrent.futures import ThreadPoolExecutor

    start, done = time.monotonic(), 0
    with ThreadPoolExecutor(parallel, thread_name_prefix="trial") as pool:
        while done < n_trials and time.monotonic() - start < timeout_s:
            trials = [study.ask() for _ in range(min(parallel, n_trials - done))]
            try:
                inputs = [search.sample(t) for t in trials]
                fitted = list(pool.map(lambda args: search.fit(*args), inputs))
            except BaseException:
                for trial in trials:
                    study.tell(trial, state=optuna_fail())
                raise
            for trial, result in zip(trials, fitted):
                study.tell(trial, search.record(trial, *result))
            done += len(trials)


def optuna_fail() -> Any:
    """optuna's FAIL trial state (imported lazily, as optuna itself)."""
    from optuna.trial import TrialState

    return TrialState.FAIL


def copy_model(src: Path, dst: Path) -> None:
    """Replace dst with a copy of the model folder src."""
    if Path(dst).exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def save_best(best: Best, params: Params, out_dir: Path) -> None:
    """Save the winning trial as a full pipeline (its fitted blocks + classifier; no refit)."""
    tuned = params.model_copy(update={"train": params.train.model_copy(update={"tfidf": best.cfg})})
    save_sklearn(Pipeline([("features", best.union), ("clf", best.clf)]), out_dir, tuned)


def optimize_model(train: pd.DataFrame, val: pd.DataFrame, params: Params, train_model_dir: Path,
                   out_dir: Path, on_trial: TrialCallback | None = None,
                   features_dir: Path | None = None) -> dict:
    """Search params.optimize.space (TfidfConfig fields) with seeded TPE, scoring each trial on val
    with params.evaluate.gate_metric, and write the better of best trial / train model to out_dir.

    features_dir: the train stage's fitted features (train.save_features); when they match these
    rows and the train model's settings, trials reuse them instead of vectorizing the corpus again.
    The final model is the winning trial's fit on train only (not train + val): it is exactly the
    model whose val score won, so the keep-the-better comparison is like for like, val stays unseen
    by every saved model (an honest check for evaluate and drift), and the fitted feature blocks are
    reused instead of vectorizing the corpus again (the flow has a 5-minute budget)."""
    if params.train.model != "tfidf":
        from tasks.transformer import optimize_transformer  # lazy: the baseline never imports torch

        return optimize_transformer(train, val, params, train_model_dir, out_dir, on_trial=on_trial)
    start = time.perf_counter()
    opt, gate = params.optimize, params.evaluate.gate_metric
    dims = parse_space(opt.space)
    searching = opt.n_trials > 0 and bool(dims)
    seed, baseline = train_stage_model(train, val, train_model_dir,
                                       features_dir if searching else None, gate)
    search = Search(train, val, params, dims, on_trial, seed)
    if searching:
        run_study(search, opt.n_trials, opt.timeout_s, params.train.seed, opt.parallel_trials)
    elif opt.n_trials > 0:
        log.warning("optimize.space is empty: nothing to search, keeping the train model")
    chosen = "optimized" if search.best.score > baseline else "train"
    if chosen == "optimized":
        save_best(search.best, params, out_dir)
    else:
        copy_model(train_model_dir, out_dir)
    return report(search, baseline, chosen, gate, time.perf_counter() - start, seed is not None)


def train_stage_model(train: pd.DataFrame, val: pd.DataFrame, model_dir: Path,
                      features_dir: Path | None, gate: str) -> tuple[FittedFeatures | None, float]:
    """The train stage's fitted features (None when not reusable) and its val score on `gate`,
    computed from those features when there are some (the same numbers, no re-vectorizing)."""
    model = load_sklearn(model_dir).pipeline
    seed = None
    if features_dir is not None:
        model_cfg = TfidfConfig.model_validate(read_meta(model_dir)["train"]["tfidf"])
        seed = load_features(features_dir, model, model_cfg,
                             texts_digest(texts_of(train), texts_of(val)))
    if seed is None:
        return None, score(model, val)[gate]
    val_X = stack(seed.val, seed.cfg.char_weight)
    return seed, score_features(model.named_steps["clf"], val_X, labels_of(val))[gate]


def report(search: Search, baseline: float, chosen: str, gate: str, seconds: float,
           reused_train_features: bool) -> dict:
    """The JSON-able summary written to metrics/optimize.json."""
    best = search.best
    return {
        "reused_train_features": reused_train_features,
        "gate_metric": gate,
        "best_params": best.values or {},
        "best_val_score": None if best.values is None else float(best.score),
        "baseline_val_score": float(baseline),
        "chosen": chosen,
        "final_params": best.cfg.model_dump() if chosen == "optimized" else None,
        "n_trials": len(search.trials),
        "trials": search.trials,
        "seconds": round(seconds, 2),
    }
