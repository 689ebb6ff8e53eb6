"""A value the user set is pinned: optimize varies only what the user left to it, and its
report says which values were searched and which were pinned, with the chosen values."""

from __future__ import annotations

from tasks.optimize.tune import optimize_model
from tasks.train.fit import train_model
from tests.model.test_optimize import TRAIN, VAL
from textloop.core.config import Params
from textloop.core.model import read_meta


def _params(c: float) -> Params:
    return Params.model_validate({"train": {"tfidf": {"min_df": 1, "C": c}},
                                  "optimize": {"n_trials": 4,
                                               "space": {"C": [0.5, 64.0], "nb_alpha": [0.5, 2.0]}},
                                  "evaluate": {"gate_metric": "accuracy"}})


def test_a_pinned_c_is_not_searched_and_the_model_keeps_it(tmp_path):
    p = _params(3.0)
    train_model(TRAIN, VAL, p, tmp_path / "train")
    seen: list[dict] = []
    report = optimize_model(TRAIN, VAL, p, tmp_path / "train", tmp_path / "final",
                            on_trial=lambda n, values, m: seen.append(values),
                            pinned=frozenset({"C"}))
    assert seen and all(set(values) == {"nb_alpha"} for values in seen)
    assert report["pinned"] == {"C": 3.0} and set(report["searched"]) == {"nb_alpha"}
    assert read_meta(tmp_path / "final")["train"]["tfidf"]["C"] == 3.0
    free = optimize_model(TRAIN, VAL, p, tmp_path / "train", tmp_path / "free")
    assert free["pinned"] == {} and set(free["searched"]) == {"C", "nb_alpha"}
