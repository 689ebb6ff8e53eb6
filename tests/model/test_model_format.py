"""Saved baseline models: arrays and a JSON description, no pickle; models saved as joblib pickles
before the format changed still load and predict the same; a pickle naming anything but a model
type is refused."""

from __future__ import annotations

import json
import os
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest

import tasks.train
from tasks.train.baseline import (
    NBLogisticRegression,
    SklearnTextClassifier,
    build_baseline,
    load_sklearn,
    model_types,
    save_sklearn,
)
from tasks.train.fit import train_model
from tasks.train.ngrams import CharWbNgramCounter, WordNgramCounter
from textloop.core.config import Params, TfidfConfig
from textloop.core.estimator_state import (
    ARRAYS_FILE,
    DESCRIPTION_FILE,
    UnsavableState,
    save_estimator,
)
from textloop.core.model import LEGACY_FILE, load_estimator, read_meta, write_meta
from textloop.pipeline.models import load_classifier

TEXTS = ["great movie, loved it", "wonderful acting and great fun", "I loved the story",
         "terrible movie, hated it", "awful acting and boring", "I hated the story",
         "the movie is on tuesday", "a film about a town", "我非常喜欢这部电影", "我讨厌这部电影"]
LABELS = ["pos", "pos", "pos", "neg", "neg", "neg", "neu", "neu", "pos", "neg"]
PROBES = ["loved it, great fun", "boring and awful", "a town on tuesday", "我喜欢", ""]


def fitted(vectorizer: str = "fast"):
    """A fitted baseline pipeline on the tiny three-class frame, after one predict (which
    builds the counters' lookup caches, as serving does before a model is saved again)."""
    pipe = build_baseline(TfidfConfig(min_df=1, vectorizer=vectorizer), seed=0)
    pipe.fit(TEXTS, np.asarray(LABELS, dtype=object))
    pipe.predict_proba(PROBES)
    return pipe


def save_as_before(pipe, folder, monkeypatch) -> None:
    """What the code before the format change wrote: a joblib pickle whose classes are named
    as `tasks.train.*` (where they once lived), beside metadata without a format."""
    for cls in (NBLogisticRegression, WordNgramCounter, CharWbNgramCounter):
        monkeypatch.setattr(cls, "__module__", "tasks.train")
        monkeypatch.setattr(tasks.train, cls.__name__, cls, raising=False)
    folder.mkdir(parents=True)
    joblib.dump(pipe, folder / LEGACY_FILE)
    monkeypatch.undo()
    write_meta(folder, "sklearn", pipe.classes_, {"clean": {}})


def test_a_trained_model_is_saved_as_arrays_and_json_naming_no_module(tmp_path):
    frame = pd.DataFrame({"text": TEXTS, "label": LABELS})
    params = Params.model_validate({"train": {"tfidf": {"min_df": 1}}})
    train_model(frame, frame, params, tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {DESCRIPTION_FILE, ARRAYS_FILE} <= files and LEGACY_FILE not in files
    description = (tmp_path / "m" / DESCRIPTION_FILE).read_text(encoding="utf-8")
    assert "tasks." not in description and "sklearn." not in description
    with np.load(tmp_path / "m" / ARRAYS_FILE, allow_pickle=False) as arrays:
        assert all(arrays[k].dtype != object for k in arrays.files)
    assert read_meta(tmp_path / "m")["format"] == 2
    assert load_classifier(tmp_path / "m").predict_proba(PROBES).shape == (5, 3)


@pytest.mark.parametrize("vectorizer", ["fast", "sklearn"])
def test_the_saved_model_predicts_what_the_fitted_one_does(tmp_path, vectorizer):
    pipe = fitted(vectorizer)
    save_sklearn(pipe, tmp_path / "m", Params())
    loaded = load_sklearn(tmp_path / "m")
    assert loaded.classes_ == ["neg", "neu", "pos"]
    np.testing.assert_array_equal(loaded.predict_proba(PROBES),
                                  SklearnTextClassifier(pipe).predict_proba(PROBES))
    assert loaded.explain("loved it, great fun")["label"] == "pos"


def test_a_model_saved_before_the_format_change_loads_and_predicts_the_same(tmp_path,
                                                                           monkeypatch):
    pipe = fitted()
    save_as_before(pipe, tmp_path / "old", monkeypatch)
    assert b"tasks.train" in (tmp_path / "old" / LEGACY_FILE).read_bytes()
    save_sklearn(pipe, tmp_path / "new", Params())
    old, new = load_classifier(tmp_path / "old"), load_classifier(tmp_path / "new")
    np.testing.assert_array_equal(old.predict_proba(PROBES), new.predict_proba(PROBES))
    np.testing.assert_array_equal(old.predict_proba(PROBES),
                                  SklearnTextClassifier(pipe).predict_proba(PROBES))


def test_a_legacy_pickle_naming_anything_but_a_model_type_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / LEGACY_FILE).write_bytes(pickle.dumps(Payload()))
    write_meta(tmp_path / "m", "sklearn", ["neg", "pos"], {"clean": {}})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_estimator(tmp_path / "m", model_types())
    assert not (tmp_path / "ran").exists()


def test_the_same_model_is_saved_as_the_same_bytes(tmp_path):
    pipe = fitted()
    for name in ("a", "b"):
        save_sklearn(pipe, tmp_path / name, Params())
    for file in (DESCRIPTION_FILE, ARRAYS_FILE):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_an_estimator_the_format_cannot_describe_is_refused_by_name(tmp_path):
    pipe = fitted()
    pipe.steps[1][1].extra_ = lambda x: x
    with pytest.raises(UnsavableState, match=r"extra_: cannot save a function"):
        save_estimator(pipe, tmp_path, model_types())


def test_a_format_from_a_newer_textloop_is_a_clear_error(tmp_path):
    save_sklearn(fitted(), tmp_path / "m", Params())
    path = tmp_path / "m" / DESCRIPTION_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        load_sklearn(tmp_path / "m")
