"""label.pseudo.use: with nb_ratios, pseudo-labelled train rows count for the baseline's NB ratios
only and the logistic regression is fitted on the other rows, in train and in every optimize
trial (tasks.train.baseline.fit_nb_lr, the one rule, also behind tasks.label.pseudo.pseudo_nb_fit); with rows,
or without pseudo rows, the fit is exactly what it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.label.pseudo import pseudo_nb_fit
from tasks.optimize.tune import Search
from tasks.train.baseline import load_sklearn, lr_row_mask
from tasks.train.fit import train_model
from textloop.core.config import Params
from textloop.core.estimator_state import ARRAYS_FILE, DESCRIPTION_FILE

GOLD_POS = ["great movie loved it", "wonderful acting great fun", "loved the story",
            "fun wonderful film", "a great film", "loved every minute"]
GOLD_NEG = ["terrible movie hated it", "awful acting boring", "hated the story",
            "boring awful film", "a terrible film", "hated every minute"]
# "superb" and "dreadful" occur in pseudo rows only
PSEUDO_POS = ["superb film", "superb story loved it", "a superb great movie"]
PSEUDO_NEG = ["dreadful film", "dreadful story hated it", "a dreadful awful movie"]
VAL = pd.DataFrame({"text": ["loved it great", "superb fun", "hated it awful", "dreadful boring"],
                    "label": ["pos", "pos", "neg", "neg"], "label_origin": "gold"})


def train_frame(with_pseudo: bool = True) -> pd.DataFrame:
    """Gold rows first, then (with_pseudo) the pseudo rows, with their label_origin."""
    rows = ([(t, "pos", "gold") for t in GOLD_POS] + [(t, "neg", "gold") for t in GOLD_NEG]
            + ([(t, "pos", "pseudo") for t in PSEUDO_POS] + [(t, "neg", "pseudo") for t in PSEUDO_NEG]
               if with_pseudo else []))
    return pd.DataFrame(rows, columns=["text", "label", "label_origin"])


def params(use: str, char_weight: float = 0.5) -> Params:
    """Tiny-data params (min_df 1, primal solver as pseudo_nb_fit uses) with label.pseudo.use."""
    return Params.model_validate({
        "train": {"tfidf": {"min_df": 1, "char_weight": char_weight, "dual_feature_ratio": 1e9}},
        "label": {"pseudo": {"enabled": True, "use": use}},
        "optimize": {"n_trials": 1, "space": {"C": [1.0, 32.0]}}})


def fitted(tmp_path, train: pd.DataFrame, p: Params, name: str):
    """train_model into tmp_path/name; returns (pipeline, the saved model's bytes)."""
    train_model(train, VAL, p, tmp_path / name)
    saved = b"".join((tmp_path / name / f).read_bytes() for f in (DESCRIPTION_FILE, ARRAYS_FILE))
    return load_sklearn(tmp_path / name).pipeline, saved


def column(pipe, word: str) -> int:
    """The column of a word unigram in the stacked features (the word block comes first)."""
    cols = pipe.named_steps["features"].transformer_list[0][1].transform([word]).indices
    assert len(cols) == 1, cols
    return int(cols[0])


def test_the_default_is_nb_ratios_and_other_values_are_refused():
    assert Params().label.pseudo.use == "nb_ratios"
    assert Params().label.pseudo.enabled is False
    with pytest.raises(ValueError, match="rows or nb_ratios"):
        lr_row_mask(train_frame(), "weights")
    assert lr_row_mask(train_frame(), "rows") is None
    assert lr_row_mask(train_frame(with_pseudo=False), "nb_ratios") is None  # no pseudo row
    assert lr_row_mask(train_frame(), "nb_ratios").tolist() == [True] * 12 + [False] * 6


def test_with_nb_ratios_the_lr_sees_only_gold_rows(tmp_path):
    """The train model equals pseudo_nb_fit (NB counts over gold + pseudo, LR on gold) on the
    same features; a word only pseudo rows hold gets no weight, though as ordinary rows it does."""
    p = params("nb_ratios")
    pipe, _ = fitted(tmp_path, train_frame(), p, "nb")
    clf, union = pipe.named_steps["clf"], pipe.named_steps["features"]
    X = union.transform(train_frame()["text"].tolist()).tocsr()
    y = train_frame()["label"].to_numpy()
    cfg = p.train.tfidf
    ref = pseudo_nb_fit(X[:12], y[:12], X[12:], y[12:], C=cfg.C, alpha=cfg.nb_alpha,
                        seed=p.train.seed)
    np.testing.assert_allclose(clf.coef_, ref.coef_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(clf.intercept_, ref.intercept_, rtol=1e-6)
    for word in ("superb", "dreadful"):
        assert clf.coef_[0, column(pipe, word)] == 0.0
    rows_pipe, _ = fitted(tmp_path, train_frame(), params("rows"), "rows")
    rows_clf = rows_pipe.named_steps["clf"]
    assert rows_clf.coef_[0, column(rows_pipe, "superb")] > 0.1  # pos is class 1
    assert rows_clf.coef_[0, column(rows_pipe, "dreadful")] < -0.1


def test_rows_mode_trains_pseudo_rows_as_ordinary_rows(tmp_path):
    """use: rows is the plain fit on every row, with or without label_origin."""
    with_origin, bytes_with = fitted(tmp_path, train_frame(), params("rows"), "a")
    plain = train_frame().drop(columns="label_origin")  # pseudo rows look like gold ones
    _, bytes_plain = fitted(tmp_path, plain, params("rows"), "b")
    assert bytes_with == bytes_plain
    assert with_origin.named_steps["clf"].coef_.any()


def test_without_pseudo_rows_both_modes_give_the_same_model_bytes(tmp_path):
    _, rows = fitted(tmp_path, train_frame(with_pseudo=False), params("rows"), "rows")
    _, ratios = fitted(tmp_path, train_frame(with_pseudo=False), params("nb_ratios"), "ratios")
    assert rows == ratios


@pytest.mark.parametrize("char_weight", [0.5, 0.0])
def test_an_optimize_trial_with_train_params_is_the_train_model(tmp_path, char_weight):
    """A full-rows trial (train's config, fitted afresh, not reused) gives train's coefficients,
    and a screening-rung fit too gives no weight to pseudo-only words."""
    p = params("nb_ratios", char_weight)
    pipe, _ = fitted(tmp_path, train_frame(), p, "train")
    search = Search(train_frame(), VAL, p, [], None)
    cfg = p.train.tfidf
    _, _, _, clf, _, _ = search.fit({}, cfg, search.cache.prepared(cfg, search.y_train), full=True)
    np.testing.assert_allclose(clf.coef_, pipe.named_steps["clf"].coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.intercept_, pipe.named_steps["clf"].intercept_, rtol=1e-5)
    search.rows = np.array([0, 1, 2, 6, 7, 8, 12, 13, 15, 16])  # the screening rung's rows
    prep = search.cache.prepared(cfg, search.y_train, search.rows)
    _, _, _, screened, _, _ = search.fit({}, cfg, prep)
    assert screened.coef_[0, column(pipe, "superb")] == 0.0
    assert screened.coef_[0, column(pipe, "dreadful")] == 0.0
    assert screened.coef_[0, column(pipe, "loved")] > 0


def test_the_label_stage_check_uses_the_same_mode(monkeypatch):
    """apply_pseudo hands label.pseudo.use to the check."""
    from tasks.label import split_trusted
    from tests.support.fixtures import synthetic
    from tests.unit.test_label_steps import _clean, _Model, _params
    from textloop.pipeline.label_steps import extend

    seen = []
    monkeypatch.setattr("textloop.pipeline.label_steps._model", lambda project, p: _Model())
    monkeypatch.setattr("tasks.label.pseudo.pseudo_check",
                        lambda *a, **k: seen.append(a[-1]) or {"helps": False})
    df = synthetic(300, seed=5)
    df["text"] = [f"{t} {i}" for i, t in enumerate(df["text"])]
    clean = _clean(df)
    clean.loc[clean.index[150:], "label"] = None
    for use in ("rows", "nb_ratios"):
        p = _params(issues="ignore", pseudo={"enabled": True, "threshold": 0.9, "use": use})
        extend(None, p, clean, *split_trusted(clean, p.label))
    assert seen == ["rows", "nb_ratios"]
