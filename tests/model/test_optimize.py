"""optimize: seeded search on val, keep-the-better, copy on zero trials, clear errors on bad spaces."""

from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfTransformer

from tasks.optimize.tune import optimize_model, parse_space
from tasks.train.baseline import (
    FEATURES_MANIFEST,
    NBLogisticRegression,
    load_sklearn,
    score,
)
from tasks.train.fit import train_model
from tasks.train.ngrams import CharWbNgramCounter, WordNgramCounter
from textloop.core.config import Params
from textloop.core.errors import UserError
from textloop.core.model import read_meta

POS = ["great movie, loved it", "wonderful acting and great fun", "I loved the story",
       "fun and wonderful film", "a great great film", "loved every wonderful minute"]
NEG = ["terrible movie, hated it", "awful acting and boring", "I hated the story",
       "boring and awful film", "a terrible terrible film", "hated every boring minute"]


def frame(pos: list[str], neg: list[str]) -> pd.DataFrame:
    """A binary text/label frame."""
    return pd.DataFrame({"text": pos + neg, "label": ["pos"] * len(pos) + ["neg"] * len(neg)})


TRAIN = frame(POS, NEG)
VAL = frame(["loved it, great fun", "wonderful story"], ["hated it, so boring", "awful film"])


def params(n_trials: int = 2, space: dict | None = None, gate: str = "accuracy") -> Params:
    """Tiny-data params (min_df=1) with a small search."""
    space = {"C": [0.5, 8.0], "word_ngram_max": [1, 2]} if space is None else space
    return Params.model_validate({"train": {"tfidf": {"min_df": 1}},
                                  "optimize": {"n_trials": n_trials, "space": space},
                                  "evaluate": {"gate_metric": gate}})


@pytest.fixture
def train_dir(tmp_path):
    """A train-stage model folder."""
    train_model(TRAIN, VAL, params(), tmp_path / "train")
    return tmp_path / "train"


def test_two_trials_call_back_twice_and_write_the_model(tmp_path, train_dir):
    calls: list[tuple] = []
    report = optimize_model(TRAIN, VAL, params(), train_dir, tmp_path / "final",
                            on_trial=lambda *args: calls.append(args))
    assert [number for number, _, _ in calls] == [0, 1]
    for _, trial_params, metrics in calls:
        assert set(trial_params) == {"C", "word_ngram_max"}
        assert isinstance(trial_params["word_ngram_max"], int) and 0.5 <= trial_params["C"] <= 8
        assert set(metrics) == {"accuracy", "f1_macro"}
    assert report["chosen"] in {"optimized", "train"} and len(report["trials"]) == 2
    assert report["baseline_val_score"] == 1.0 and report["best_val_score"] == 1.0
    assert read_meta(tmp_path / "final")["kind"] == "sklearn"
    assert load_sklearn(tmp_path / "final").predict_proba(["great fun"]).shape == (1, 2)


def test_search_is_seeded(tmp_path, train_dir):
    first = optimize_model(TRAIN, VAL, params(), train_dir, tmp_path / "a")
    second = optimize_model(TRAIN, VAL, params(), train_dir, tmp_path / "b")
    assert [t["params"] for t in first["trials"]] == [t["params"] for t in second["trials"]]


def test_a_better_trial_replaces_the_train_model(tmp_path):
    """A train model fit on flipped labels scores 0 on val, so the search must win and be saved."""
    flipped = TRAIN.assign(label=TRAIN["label"].map({"pos": "neg", "neg": "pos"}))
    train_model(flipped, VAL, params(), tmp_path / "train")
    report = optimize_model(TRAIN, VAL, params(gate="f1_macro"), tmp_path / "train",
                            tmp_path / "final")
    assert report["baseline_val_score"] == 0.0 and report["chosen"] == "optimized"
    final = load_sklearn(tmp_path / "final")
    assert score(final, VAL)["f1_macro"] == report["best_val_score"] == 1.0
    saved = read_meta(tmp_path / "final")["train"]["tfidf"]
    assert {k: saved[k] for k in report["best_params"]} == report["best_params"]
    proba = final.predict_proba(["great fun", "so boring"])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_zero_trials_copy_the_train_model(tmp_path, train_dir):
    calls: list[tuple] = []
    report = optimize_model(TRAIN, VAL, params(n_trials=0), train_dir, tmp_path / "final",
                            on_trial=lambda *args: calls.append(args))
    assert calls == [] and report["chosen"] == "train" and report["trials"] == []
    for src in train_dir.iterdir():
        assert (tmp_path / "final" / src.name).read_bytes() == src.read_bytes()


def test_unknown_space_key_is_a_clear_error(tmp_path, train_dir):
    with pytest.raises(UserError, match="optimize.space: unknown key 'learning_rate'"):
        optimize_model(TRAIN, VAL, params(space={"learning_rate": [0.1, 1]}), train_dir,
                       tmp_path / "final")
    assert not (tmp_path / "final").exists()


@pytest.mark.parametrize("space,match", [
    ({"C": [8.0, 1.0]}, "low <= high"),
    ({"C": [1.0]}, r"\[low, high\]"),
    ({"C": [0.0, 1.0]}, "out of range"),
    ({"word_ngram_max": [1, 9]}, "out of range"),
])
def test_bad_ranges_are_clear_errors(space, match):
    with pytest.raises(UserError, match=match):
        parse_space(space)


def test_other_models_delegate_to_the_transformer(tmp_path, monkeypatch):
    fake = types.ModuleType("tasks.train.transformer.trainer")
    fake.train_transformer = lambda *args, **kw: {"delegated": "train"}
    fake.optimize_transformer = lambda *args, **kw: {"delegated": "optimize"}
    monkeypatch.setitem(sys.modules, "tasks.train.transformer.trainer", fake)
    p = Params.model_validate({"train": {"model": "minilm"}})
    assert train_model(TRAIN, VAL, p, tmp_path / "m") == {"delegated": "train"}
    assert optimize_model(TRAIN, VAL, p, tmp_path / "m", tmp_path / "f") == {
        "delegated": "optimize"}


def counters(folder):
    """The fitted word and char counters inside a saved baseline model."""
    union = load_sklearn(folder).pipeline.named_steps["features"]
    return [block.named_steps["counts"] for _, block in union.transformer_list]


def refuse_fitting(monkeypatch) -> None:
    """Any vectorizer fit from here on fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("optimize fitted a vectorizer again")

    for cls in (WordNgramCounter, CharWbNgramCounter, TfidfTransformer):
        monkeypatch.setattr(cls, "fit", refuse)
        monkeypatch.setattr(cls, "fit_transform", refuse)


def test_optimize_reuses_the_train_stage_features(tmp_path, monkeypatch):
    """Labels flipped at train so the search wins: the saved winner carries train's own fitted
    vocabularies, and no vectorizer is fitted during optimize."""
    flipped = TRAIN.assign(label=TRAIN["label"].map({"pos": "neg", "neg": "pos"}))
    space = {"C": [0.5, 8.0], "char_weight": [0.25, 1.0]}
    train_model(flipped, VAL, params(space=space), tmp_path / "train",
                features_dir=tmp_path / "features")
    assert (tmp_path / "features" / FEATURES_MANIFEST).exists()
    refuse_fitting(monkeypatch)
    report = optimize_model(TRAIN, VAL, params(n_trials=3, space=space, gate="f1_macro"),
                            tmp_path / "train", tmp_path / "final",
                            features_dir=tmp_path / "features")
    assert report["reused_train_features"] is True and len(report["trials"]) == 3
    assert report["baseline_val_score"] == 0.0 and report["chosen"] == "optimized"
    (word, char), (train_word, train_char) = counters(tmp_path / "final"), counters(tmp_path / "train")
    assert word.tokens_ == train_word.tokens_ and char.grams_ == train_char.grams_
    np.testing.assert_array_equal(word.codes_[1], train_word.codes_[1])
    final = load_sklearn(tmp_path / "final")  # self-contained: loads and predicts from the folder
    assert score(final, VAL)["f1_macro"] == report["best_val_score"] == 1.0


def test_baseline_score_from_features_equals_scoring_the_texts(tmp_path, monkeypatch):
    train_model(TRAIN, VAL, params(), tmp_path / "train", features_dir=tmp_path / "features")
    expected = score(load_sklearn(tmp_path / "train"), VAL)["f1_macro"]
    refuse_fitting(monkeypatch)
    report = optimize_model(TRAIN, VAL, params(space={"C": [0.5, 8.0]}, gate="f1_macro"),
                            tmp_path / "train", tmp_path / "final",
                            features_dir=tmp_path / "features")
    assert report["reused_train_features"] is True
    assert report["baseline_val_score"] == expected == 1.0


def test_features_of_other_rows_are_not_reused(tmp_path):
    """Features fitted on other train rows: optimize fits its own instead of trusting them."""
    train_model(TRAIN, VAL, params(), tmp_path / "train", features_dir=tmp_path / "features")
    fewer = TRAIN.iloc[1:].reset_index(drop=True)
    report = optimize_model(fewer, VAL, params(), tmp_path / "train", tmp_path / "final",
                            features_dir=tmp_path / "features")
    assert report["reused_train_features"] is False and len(report["trials"]) == 2
    assert report["baseline_val_score"] == 1.0


def test_features_of_other_settings_are_not_reused(tmp_path):
    """The manifest's settings differ from the train model's: not reused."""
    train_model(TRAIN, VAL, params(), tmp_path / "train", features_dir=tmp_path / "features")
    other = Params.model_validate({"train": {"tfidf": {"min_df": 1, "word_ngram_max": 1}}})
    train_model(TRAIN, VAL, other, tmp_path / "train")  # model replaced, features left stale
    report = optimize_model(TRAIN, VAL, params(), tmp_path / "train", tmp_path / "final",
                            features_dir=tmp_path / "features")
    assert report["reused_train_features"] is False


def test_transformer_train_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    fake = types.ModuleType("tasks.train.transformer.trainer")
    fake.train_transformer = lambda *args, **kw: {"delegated": "train"}
    monkeypatch.setitem(sys.modules, "tasks.train.transformer.trainer", fake)
    p = Params.model_validate({"train": {"model": "minilm"}})
    train_model(TRAIN, VAL, p, tmp_path / "m", features_dir=tmp_path / "features")
    assert [f.name for f in (tmp_path / "features").iterdir()] == [FEATURES_MANIFEST]
    assert '"reusable": false' in (tmp_path / "features" / FEATURES_MANIFEST).read_text()


def test_parallel_trials_are_the_trials_of_one_at_a_time(tmp_path, train_dir):
    """optimize.parallel_trials changes the wall time, not the search: the same seeded trials,
    the same scores, in the same order, the same winner."""
    space = {"C": [0.5, 8.0], "char_weight": [0.25, 1.0], "nb_alpha": [0.5, 2.0]}
    runs = {}
    for parallel in (1, 2):
        p = params(n_trials=3, space=space)
        p = p.model_copy(update={"optimize": p.optimize.model_copy(
            update={"parallel_trials": parallel})})
        calls: list[int] = []
        runs[parallel] = optimize_model(TRAIN, VAL, p, train_dir, tmp_path / f"final{parallel}",
                                        on_trial=lambda number, *_, seen=calls: seen.append(number))
        assert calls == [0, 1, 2]
    strip = [{k: v for k, v in t.items() if k != "seconds"} for t in runs[1]["trials"]]
    assert strip == [{k: v for k, v in t.items() if k != "seconds"} for t in runs[2]["trials"]]
    assert runs[1]["best_params"] == runs[2]["best_params"] and len(strip) == 3


def test_dual_fits_in_threads_are_the_fits_of_one_at_a_time():
    """liblinear's dual solver draws its coordinate order from one generator per process: two
    seeded fits at once in threads (parallel trials, finalists) give the models they give one
    at a time, to the bit, three times over."""
    from concurrent.futures import ThreadPoolExecutor

    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = sp.random(4000, 20000, density=0.003, format="csr", random_state=1, dtype=np.float32)
    y = np.where(np.asarray(X @ rng.normal(size=20000)).ravel() > 0, "pos", "neg")

    def fit(C: float) -> np.ndarray:
        clf = NBLogisticRegression(C=C, random_state=42, dual_feature_ratio=1.0)
        return clf.fit(X, y).coef_

    alone = [fit(C) for C in (1.0, 4.0)]
    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(fit, (1.0, 4.0)))
        assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def screening(p: Params, **update) -> Params:
    """p with optimize fields replaced (screen_fraction, screen_min_rows, finalists...)."""
    return p.model_copy(update={"optimize": p.optimize.model_copy(update=update)})


def test_screen_rows_are_a_seeded_stratified_share():
    from tasks.optimize.tune import screen_rows

    y = np.array(["a"] * 80 + ["b"] * 16 + ["c"] * 4)
    opt = Params().optimize.model_copy(update={"screen_fraction": 0.25, "screen_min_rows": 10})
    rows = screen_rows(y, opt, seed=42)
    assert sorted(zip(*np.unique(y[rows], return_counts=True))) == [("a", 20), ("b", 4), ("c", 1)]
    assert np.array_equal(rows, screen_rows(y, opt, seed=42)) and np.all(np.diff(rows) > 0)
    assert not np.array_equal(rows, screen_rows(y, opt, seed=7))
    assert screen_rows(y, opt.model_copy(update={"screen_min_rows": 101}), seed=42) is None
    assert screen_rows(y, opt.model_copy(update={"screen_fraction": 1.0}), seed=42) is None


def test_trials_are_screened_on_a_share_and_the_best_refitted_on_all_rows(tmp_path):
    """Labels flipped at train so the search wins: 4 trials fitted on half the rows, the best
    one fitted again on all 12, and the saved model is that refit (its val score reported)."""
    flipped = TRAIN.assign(label=TRAIN["label"].map({"pos": "neg", "neg": "pos"}))
    train_model(flipped, VAL, params(), tmp_path / "train")
    p = screening(params(n_trials=4, gate="f1_macro"), screen_fraction=0.5, screen_min_rows=10)
    report = optimize_model(TRAIN, VAL, p, tmp_path / "train", tmp_path / "final")
    assert report["screen_rows"] == 6 and [t["rows"] for t in report["trials"]] == [6] * 4
    gate = [t["f1_macro"] for t in report["trials"]]
    best = min(range(4), key=lambda i: (-gate[i], i))
    [finalist] = report["finalists"]
    assert finalist["number"] == best and finalist["params"] == report["best_params"]
    assert report["chosen"] == "optimized" and report["best_val_score"] == finalist["f1_macro"]
    assert score(load_sklearn(tmp_path / "final"), VAL)["f1_macro"] == finalist["f1_macro"]


def test_small_splits_fit_every_trial_on_all_rows(tmp_path, train_dir):
    """Below optimize.screen_min_rows (default 2000) there is no second rung."""
    report = optimize_model(TRAIN, VAL, params(), train_dir, tmp_path / "final")
    assert report["screen_rows"] is None and report["finalists"] == []
    assert [t["rows"] for t in report["trials"]] == [len(TRAIN)] * 2


def test_trial_zero_is_the_train_model_and_is_not_refitted(tmp_path, monkeypatch):
    """train's C lies in the space: trial 0 samples it, and with train's features reused its
    all-rows fit is the train model itself: scored from the features, never fitted again."""
    space = {"C": [0.5, 20.0]}  # train's C = 16
    train_model(TRAIN, VAL, params(space=space), tmp_path / "train",
                features_dir=tmp_path / "features")
    fits: list[float] = []
    original = NBLogisticRegression.fit_prepared
    monkeypatch.setattr(NBLogisticRegression, "fit_prepared",
                        lambda self, *a: fits.append(self.C) or original(self, *a))
    report = optimize_model(TRAIN, VAL, params(n_trials=3, space=space), tmp_path / "train",
                            tmp_path / "final", features_dir=tmp_path / "features")
    first = report["trials"][0]
    assert first["params"] == {"C": 16.0} and first["reused_train_model"] is True
    assert first["accuracy"] == report["baseline_val_score"] == 1.0
    assert len(fits) == 2 and 16.0 not in fits  # only trials 1 and 2 were fitted


def test_screening_fits_use_the_looser_tolerance(tmp_path, train_dir, monkeypatch):
    tols: list[tuple[float, int]] = []
    original = NBLogisticRegression.fit_prepared
    monkeypatch.setattr(NBLogisticRegression, "fit_prepared",
                        lambda self, X0, *a: tols.append((self.tol, X0.shape[0]))
                        or original(self, X0, *a))
    p = screening(params(n_trials=2), screen_fraction=0.5, screen_min_rows=10, screen_tol=0.01)
    optimize_model(TRAIN, VAL, p, train_dir, tmp_path / "final")
    assert tols == [(0.01, 6), (0.01, 6), (None, 12)]  # the finalist: train.tfidf.tol's


def test_screening_fits_default_to_the_final_fits_tolerance(tmp_path, train_dir, monkeypatch):
    """optimize.screen_tol null: screening fits stop where the final fit does (train.tfidf.tol),
    never tighter."""
    tols: list[tuple[float, int]] = []
    original = NBLogisticRegression.fit_prepared
    monkeypatch.setattr(NBLogisticRegression, "fit_prepared",
                        lambda self, X0, *a: tols.append((self.tol, X0.shape[0]))
                        or original(self, X0, *a))
    p = screening(params(n_trials=2), screen_fraction=0.5, screen_min_rows=10)
    p = p.model_copy(update={"train": p.train.model_copy(
        update={"tfidf": p.train.tfidf.model_copy(update={"tol": 0.05})})})
    optimize_model(TRAIN, VAL, p, train_dir, tmp_path / "final")
    assert [t for t, _ in tols] == [0.05] * len(tols) and len(tols) == 3


def test_a_space_without_block_settings_keeps_the_train_rows_stacked_only():
    """C, char_weight and nb_alpha never change a feature block: once the train blocks are
    stacked, their per-block copies are freed, and every trial's inputs (all rows or the
    screening rows) are the same as with the copies kept."""
    from tasks.optimize.tune import BlockCache, Search
    from textloop.core.config import OptimizeConfig

    cfg, y = params().train.tfidf, TRAIN["label"].astype(str).to_numpy()
    texts, val = TRAIN["text"].tolist(), VAL["text"].tolist()
    kept, freed = BlockCache(texts, val), BlockCache(texts, val, fixed_blocks=True)
    for rows in (None, np.arange(0, 12, 2), None):
        a, b = kept.prepared(cfg, y, rows), freed.prepared(cfg, y, rows)
        assert (a.X0 != b.X0).nnz == 0 and (a.X_val != b.X_val).nnz == 0
        assert np.array_equal(a.col_weight, b.col_weight)
    assert [entry[1] is None for entry in freed._store.values()] == [True, True]
    assert [entry[1] is None for entry in kept._store.values()] == [False, False]
    for space, fixed in ((OptimizeConfig().space, True), (params().optimize.space, False)):
        assert Search(TRAIN, VAL, params(), parse_space(space), None).cache.fixed_blocks is fixed
