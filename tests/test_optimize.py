"""optimize: seeded search on val, keep-the-better, copy on zero trials, clear errors on bad spaces."""

from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfTransformer

from tasks.ngrams import CharWbNgramCounter, WordNgramCounter
from tasks.optimize import optimize_model, parse_space
from tasks.train import FEATURES_MANIFEST, load_sklearn, score, train_model
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
    fake = types.ModuleType("tasks.transformer")
    fake.train_transformer = lambda *args, **kw: {"delegated": "train"}
    fake.optimize_transformer = lambda *args, **kw: {"delegated": "optimize"}
    monkeypatch.setitem(sys.modules, "tasks.transformer", fake)
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
    fake = types.ModuleType("tasks.transformer")
    fake.train_transformer = lambda *args, **kw: {"delegated": "train"}
    monkeypatch.setitem(sys.modules, "tasks.transformer", fake)
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
