"""optimize: tune the baseline with optuna on the val split, reusing the feature blocks the train
stage fitted (and any refitted ones across trials), and keep the better of the best trial and the
train-stage model.

Two rungs (successive halving): on a big train split every trial is first fitted on a seeded,
class-stratified share of the rows (optimize.screen_fraction), at liblinear tolerance
optimize.screen_tol (default: the final fit's), and only the best `optimize.finalists` are refitted on all rows. Trial 0 is train's own
configuration (when it lies in the space): its all-rows fit is the train model, already scored."""

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

from tasks.optimize.search_space import Dim, parse_space, suggest
from tasks.train.baseline import (
    BLOCKS,
    FittedFeatures,
    NBLogisticRegression,
    NBStats,
    build_classifier,
    build_features,
    feature_union,
    fit_block,
    fit_nb_lr,
    labels_of,
    load_features,
    load_sklearn,
    lr_row_mask,
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
from textloop.core.config import OptimizeConfig, Params, TfidfConfig
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
                 seed: FittedFeatures | None = None, fixed_blocks: bool = False):
        self.train_texts, self.val_texts = train_texts, val_texts
        self.fixed_blocks = fixed_blocks  # no trial changes a block: its train rows live stacked only
        self._stacked: tuple[tuple, sp.csr_matrix, NBStats] | None = None
        self._screen: tuple[tuple, sp.csr_matrix, NBStats] | None = None  # rung 0's rows only
        self._store: OrderedDict[tuple, tuple[Pipeline, sp.csr_matrix | None, sp.csr_matrix]] = (
            OrderedDict())  # train matrix None: freed once stacked (fixed_blocks)
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

    def prepared(self, cfg: TfidfConfig, y_train: np.ndarray,
                 rows: np.ndarray | None = None) -> Prepared:
        """What a trial with cfg fits on: the unweighted train blocks side by side and their NB
        counts, shared by every trial with the same blocks (built once: stacking, binarizing
        and counting a wide IMDb matrix is seconds per trial), the per-column block weights
        (word 1, char cfg.char_weight), the weighted val matrix and the fitted FeatureUnion.
        rows: only these train rows (the screening rung), their own NB counts, also shared."""
        fitted = {kind: self.get(kind, cfg) for kind in BLOCKS}
        key = tuple(block_key(kind, cfg) for kind in BLOCKS)
        if self._stacked is None or self._stacked[0] != key:
            self._stacked = self._screen = None  # free the old ones first: corpus-sized
            X0 = stack({k: f[1] for k, f in fitted.items()}, 1.0)
            self._stacked = (key, X0, nb_stats(X0, y_train))
            if self.fixed_blocks:  # the stacked copy is all any later trial reads (IMDb: 330 MB)
                for kind in BLOCKS:
                    block, _, val = self._store[block_key(kind, cfg)]
                    self._store[block_key(kind, cfg)] = (block, None, val)
        _, X0, stats = self._stacked
        if rows is not None:
            if self._screen is None or self._screen[0] != key:
                sub = X0[rows]
                self._screen = (key, sub, nb_stats(sub, y_train[rows]))
            _, X0, stats = self._screen
        w = cfg.char_weight
        col_weight = np.concatenate([np.ones(fitted["word"][2].shape[1], dtype=X0.dtype),
                                     np.full(fitted["char"][2].shape[1], w, dtype=X0.dtype)])
        return Prepared(X0, stats, col_weight, stack({k: f[2] for k, f in fitted.items()}, w),
                        feature_union({k: f[0] for k, f in fitted.items()}, w))

    def drop_screen(self) -> None:
        """Free the screening rung's rows (the final rung fits on all rows)."""
        self._screen = None


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


def screen_rows(y: np.ndarray, opt: OptimizeConfig, seed: int) -> np.ndarray | None:
    """The sorted train row indices the screening rung fits on: opt.screen_fraction of each
    class (at least one row of each), drawn with `seed`; None (every trial on all rows) when
    the fraction is 1 or the split has fewer than opt.screen_min_rows rows."""
    if opt.screen_fraction >= 1 or len(y) < opt.screen_min_rows:
        return None
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(y):  # sorted: the same draw for the same rows and seed
        members = np.flatnonzero(y == label)
        take = max(1, round(opt.screen_fraction * len(members)))
        picked.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picked))


class Search:
    """One optuna study over the baseline: the objective plus what it remembers between trials.
    rows: the screening rung's train rows (None: every trial is fitted on all rows and is a
    candidate itself); reuse: the train model's val metrics when its features were reused, so
    a full fit of train's exact configuration is that model (scored, never refitted)."""

    def __init__(self, train: pd.DataFrame, val: pd.DataFrame, params: Params, dims: list[Dim],
                 on_trial: TrialCallback | None, seed: FittedFeatures | None = None,
                 rows: np.ndarray | None = None, reuse: dict | None = None):
        self.params, self.dims, self.on_trial = params, dims, on_trial
        fixed = not any(d.name in keys for d in dims for keys in BLOCK_KEYS.values())
        self.cache = BlockCache(texts_of(train), texts_of(val), seed, fixed_blocks=fixed)
        self.y_train, self.y_val = labels_of(train), labels_of(val)
        self.lr_mask = lr_row_mask(train, params.label.pseudo.use)  # None: LR on every row
        self.rows, self.reuse = rows, reuse
        self.reuse_cfg = None if seed is None else seed.cfg  # the train model's settings
        self.best = Best()
        self.trials: list[dict] = []
        self.finalists: list[dict] = []
        self._configs: dict[int, tuple[dict, TfidfConfig]] = {}

    def train_values(self) -> dict | None:
        """train.tfidf's values of the searched fields (trial 0), None when one is outside
        its range (optuna would not sample it)."""
        base = self.params.train.tfidf
        values = {d.name: getattr(base, d.name) for d in self.dims}
        inside = all(d.low <= float(values[d.name]) <= d.high for d in self.dims)
        return values if inside else None

    def objective(self, trial: Any) -> float:
        """Fit one sampled config (on the screening rows when screening), score it on val with
        the gate metric."""
        return self.record(trial, *self.fit(*self.sample(trial)))

    def sample(self, trial: Any) -> tuple[dict, TfidfConfig, Prepared]:
        """A trial's config and inputs (touches the block cache: call from one thread)."""
        values, cfg = suggest(trial, self.dims, self.params.train.tfidf)
        self._configs[trial.number] = (values, cfg)
        return values, cfg, self.cache.prepared(cfg, self.y_train, self.rows)

    def fit(self, values: dict, cfg: TfidfConfig, prep: Prepared, full: bool = False
            ) -> tuple[dict, TfidfConfig, Prepared, NBLogisticRegression | None, dict, float]:
        """Fit and score one trial (on all rows when full or not screening; a screening fit
        uses optimize.screen_tol); reads shared inputs only, so trials may fit in parallel
        threads (liblinear releases the GIL). clf is None for train's own model (reused)."""
        start = time.perf_counter()
        full = full or self.rows is None
        if full and self.reuse is not None and cfg == self.reuse_cfg:
            return values, cfg, prep, None, dict(self.reuse), time.perf_counter() - start
        clf = build_classifier(cfg, self.params.train.seed)
        if not full and self.params.optimize.screen_tol is not None:
            clf.set_params(tol=self.params.optimize.screen_tol)
        y = self.y_train if full else self.y_train[self.rows]
        lr_rows = (None if self.lr_mask is None else
                   np.flatnonzero(self.lr_mask if full else self.lr_mask[self.rows]))
        if cfg.char_weight > 0:
            fit_nb_lr(clf, prep.X0, y, lr_rows, prep.col_weight, prep.stats)
        else:  # a zero weight empties the char block: its presence counts must go too
            fit_nb_lr(clf, scale_columns(prep.X0, prep.col_weight), y, lr_rows)
        metrics = metrics_from_proba(list(clf.classes_), clf.predict_proba(prep.X_val), self.y_val)
        return values, cfg, prep, clf, metrics, time.perf_counter() - start

    def record(self, trial: Any, values: dict, cfg: TfidfConfig, prep: Prepared,
               clf: NBLogisticRegression | None, metrics: dict, seconds: float) -> float:
        """Keep a fitted trial: its row in the report, the best so far (when it was fitted on
        all rows), the callback."""
        value = metrics[self.params.evaluate.gate_metric]
        rows = len(self.y_train) if self.rows is None else len(self.rows)
        self.trials.append({"number": trial.number, "params": values, **metrics,
                            "seconds": round(seconds, 2), "rows": rows,
                            "reused_train_model": clf is None})
        log.info("trial %d %s -> %s %.4f (%d rows)", trial.number, values,
                 self.params.evaluate.gate_metric, value, rows)
        if self.rows is None:
            self._consider(value, values, cfg, prep, clf)
        if self.on_trial is not None:
            self.on_trial(trial.number, values, metrics)
        return value

    def _consider(self, value: float, values: dict, cfg: TfidfConfig, prep: Prepared,
                  clf: NBLogisticRegression | None) -> None:
        """Make an all-rows fit the best when it beats the best so far."""
        if value > self.best.score:
            self.best = Best(value, values, cfg, prep.union, clf)

    def final_rung(self, parallel: int) -> None:
        """Screening only: refit the optimize.finalists best screened trials (ties: the earlier
        trial) on all train rows, in threads, and keep the best of them."""
        if self.rows is None or not self.trials:
            return
        gate = self.params.evaluate.gate_metric
        ranked = sorted(self.trials, key=lambda t: (-t[gate], t["number"]))
        chosen = [t["number"] for t in ranked[: self.params.optimize.finalists]]
        self.cache.drop_screen()
        inputs = [(*self._configs[n], self.cache.prepared(self._configs[n][1], self.y_train))
                  for n in chosen]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(parallel, len(inputs))),
                                thread_name_prefix="finalist") as pool:
            fitted = list(pool.map(lambda args: self.fit(*args, full=True), inputs))
        for number, (values, cfg, prep, clf, metrics, seconds) in zip(chosen, fitted):
            self.finalists.append({"number": number, "params": values, **metrics,
                                   "seconds": round(seconds, 2),
                                   "reused_train_model": clf is None})
            log.info("finalist %d %s -> %s %.4f (all %d rows)", number, values, gate,
                     metrics[gate], len(self.y_train))
            self._consider(metrics[gate], values, cfg, prep, clf)


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
        if (first := search.train_values()) is not None:
            study.enqueue_trial(first)  # trial 0: train's own configuration
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
                   features_dir: Path | None = None, pinned: frozenset[str] = frozenset()
                   ) -> dict:
    """Search params.optimize.space (TfidfConfig fields) with seeded TPE, scoring each trial on val
    with params.evaluate.gate_metric, and write the better of best trial / train model to out_dir.

    features_dir: the train stage's fitted features (train.save_features); when they match these
    rows and the train model's settings, trials reuse them instead of vectorizing the corpus again.
    The final model is the winning trial's fit on train only (not train + val): it is exactly the
    model whose val score won, so the keep-the-better comparison is like for like, val stays unseen
    by every saved model (an honest check for evaluate and drift), and the fitted feature blocks are
    reused instead of vectorizing the corpus again (the flow has a 5-minute budget).

    pinned: train.tfidf fields the user set explicitly (textloop.core.config.explicit_settings);
    the search leaves them at the user's value and varies only the rest of the space."""
    if params.train.model != "tfidf":
        from tasks.train.transformer.trainer import (
            optimize_transformer,  # lazy: the baseline never imports torch
        )

        return optimize_transformer(train, val, params, train_model_dir, out_dir, on_trial=on_trial)
    start = time.perf_counter()
    opt, gate = params.optimize, params.evaluate.gate_metric
    space = parse_space(opt.space)
    dims = [d for d in space if d.name not in pinned]
    searching = opt.n_trials > 0 and bool(dims)
    seed, base_metrics = train_stage_model(train, val, train_model_dir,
                                           features_dir if searching else None)
    baseline = base_metrics[gate]
    rows = screen_rows(labels_of(train), opt, params.train.seed)
    search = Search(train, val, params, dims, on_trial, seed, rows,
                    base_metrics if seed is not None else None)
    reused, seed = seed is not None, None  # the search holds what it needs of train's features
    if searching:
        run_study(search, opt.n_trials, opt.timeout_s, params.train.seed, opt.parallel_trials)
        search.final_rung(opt.parallel_trials)
    elif opt.n_trials > 0:
        log.warning("optimize.space is empty%s: nothing to search, keeping the train model",
                    " once the keys the user set are pinned" if space else "")
    chosen = "optimized" if search.best.score > baseline else "train"
    if chosen == "optimized":
        save_best(search.best, params, out_dir)
    else:
        copy_model(train_model_dir, out_dir)
    out = report(search, baseline, chosen, gate, time.perf_counter() - start, reused)
    return {**out, **searched_and_pinned(space, pinned, params.train.tfidf,
                                         search.best.cfg if chosen == "optimized" else None)}


def searched_and_pinned(space: list[Dim], pinned: frozenset[str], base: TfidfConfig,
                        best: TfidfConfig | None) -> dict[str, dict[str, Any]]:
    """What the run summary says about the search: {searched: {field: chosen value}, pinned:
    {field: the user's value}} over optimize.space (best: the winning trial's settings, None
    when the train model was kept)."""
    chosen = best or base
    return {"searched": {d.name: getattr(chosen, d.name) for d in space if d.name not in pinned},
            "pinned": {d.name: getattr(base, d.name) for d in space if d.name in pinned}}


def train_stage_model(train: pd.DataFrame, val: pd.DataFrame, model_dir: Path,
                      features_dir: Path | None) -> tuple[FittedFeatures | None, dict]:
    """The train stage's fitted features (None when not reusable) and its val metrics
    (accuracy, f1_macro), computed from those features when there are some (the same numbers,
    no re-vectorizing)."""
    model = load_sklearn(model_dir).pipeline
    seed = None
    if features_dir is not None:
        model_cfg = TfidfConfig.model_validate(read_meta(model_dir)["train"]["tfidf"])
        seed = load_features(features_dir, model, model_cfg,
                             texts_digest(texts_of(train), texts_of(val)))
    if seed is None:
        return None, score(model, val)
    val_X = stack(seed.val, seed.cfg.char_weight)
    return seed, score_features(model.named_steps["clf"], val_X, labels_of(val))


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
        "screen_rows": None if search.rows is None else len(search.rows),
        "trials": search.trials,
        "finalists": search.finalists,
        "seconds": round(seconds, 2),
    }
