"""Label-error detection, weak supervision and pseudo-labels on tiny synthetic frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.label import split_trusted
from tasks.label.label_issues import ISSUE_REASON, detect
from tasks.label.pseudo import helps_beyond_noise, pseudo_check, pseudo_label
from tasks.label.weak import (
    ABSTAIN,
    LabelingFunction,
    combine,
    keyword_lf,
    label_matrix,
    load_lfs,
    model_lf,
    regex_lf,
    weak_labels,
)
from tasks.shard import split_names
from tasks.shard.shard_parts import assign_splits
from tests.support.fixtures import synthetic
from textloop.core.config import Params
from textloop.core.errors import UserError
from textloop.core.splits import human_rows, training_rows
from textloop.pipeline.code_deps import add_user_code
from textloop.pipeline.label_steps import extend


def _clean(df: pd.DataFrame, prefix: str = "r") -> pd.DataFrame:
    """Clean-schema rows from text/label frames (label None = unlabeled)."""
    n = len(df)
    return pd.DataFrame({"row_id": [f"{prefix}{i}" for i in range(n)], "text": df["text"].tolist(),
                         "label": df["label"].tolist(), "confidence": [None] * n,
                         "rating": None, "source": "f", "role": "data",
                         "origin": [f"f:{i + 1}" for i in range(n)]})


def _planted(n: int = 240) -> tuple[pd.DataFrame, list[str]]:
    """Separable rows plus three train-split rows whose text is plainly one class but whose
    label is the other; returns (clean frame, the planted ids)."""
    df = synthetic(n, seed=3)
    df["text"] = [f"{t} {i}" for i, t in enumerate(df["text"])]  # distinct texts
    clean = _clean(df)
    train = clean[split_names(clean, Params().shard) == "train"]
    flipped = train["row_id"].iloc[[0, 5, 9]].tolist()
    planted = [("great excellent wonderful film", "neg"), ("terrible awful boring film", "pos"),
               ("lovely brilliant enjoyable film", "neg")]  # distinct words: no two teach each other
    for rid, (text, given) in zip(flipped, planted):
        clean.loc[clean["row_id"] == rid, ["text", "label"]] = [text, given]
    return clean, flipped


def test_a_planted_mislabeled_row_is_found():
    clean, flipped = _planted()
    found = detect(clean, folds=5, seed=0)
    assert set(flipped) <= set(found["row_id"])
    row = found.set_index("row_id").loc[flipped[0]]
    assert row["given_label"] == clean.set_index("row_id").loc[flipped[0], "label"]
    assert row["suggested_label"] != row["given_label"] and row["label_quality"] < 0.5
    assert detect(clean.head(3)) is None  # a class with < 2 rows: no honest cross-validation


def _params(**label) -> Params:
    base = Params().model_dump()
    base["label"].update(label)
    return Params(**base)


def test_drop_quarantines_with_the_reason_and_counts_add_up():
    clean, flipped = _planted()
    clean.loc[clean.index[-4:], "label"] = None  # four unlabeled rows: queued
    p = _params(issues="drop")
    out = extend(None, p, clean, *split_trusted(clean, p.label))
    assert set(flipped) <= set(out.quarantined["row_id"])
    assert (out.quarantined["reason"] == ISSUE_REASON).all()
    assert not out.labeled["row_id"].isin(out.quarantined["row_id"]).any()
    r = out.report
    assert r["rows_trusted"] + r["rows_queued"] + r["rows_quarantined"] == r["rows_in"] == 240
    assert r["rows_queued"] == 4 and r["rows_quarantined"] == r["issues"]["issues"] == len(out.issues)
    # never the test/val split: every examined or quarantined row is a train-split row
    split = dict(zip(clean["row_id"], split_names(clean, p.shard)))
    assert {split[i] for i in out.quarantined["row_id"]} == {"train"}
    assert r["issues"]["rows_examined"] == sum(
        split[i] == "train" for i in clean.dropna(subset=["label"])["row_id"])


def test_flag_keeps_rows_and_review_queues_them_with_both_labels():
    clean, flipped = _planted()
    p = _params(issues="flag")
    flag = extend(None, p, clean, *split_trusted(clean, p.label))
    assert len(flag.labeled) == 240 and flag.report["issues"]["issues"] >= 3
    p = _params(issues="review")
    review = extend(None, p, clean, *split_trusted(clean, p.label))
    q = review.queue.set_index("row_id").loc[flipped]
    assert (q["reason"] == ISSUE_REASON).all() and (q["label"] == "").all()
    assert q["source_label"].tolist() == clean.set_index("row_id").loc[flipped, "label"].tolist()
    assert (q["suggested_label"] != q["source_label"]).all()
    assert len(review.labeled) + len(review.queue) == 240


def test_an_abstain_is_not_a_vote():
    lfs = [keyword_lf("pos", ["good"]), keyword_lf("neg", ["bad"]), regex_lf("neg", r"\bnot good\b")]
    L = label_matrix(lfs, ["good fun", "plain", "bad good", "not good"], ["neg", "pos"])
    assert L.tolist() == [[1, -1, -1], [-1, -1, -1], [1, 0, -1], [1, -1, 0]]
    pred, _ = combine(L, 2, "majority")
    # one vote and two abstains = that vote; no vote = no label; a real 1-1 tie = no label
    assert pred.tolist() == [1, -1, -1, -1]
    pred, conf = combine(L, 2, "label_model")
    assert pred[0] == 1 and pred[1] == -1 and conf[1] == 0.0


def test_label_report_lists_per_function_coverage_and_accuracy():
    lfs = [keyword_lf("pos", ["good"], name="good"), keyword_lf("neg", ["bad"], name="bad"),
           LabelingFunction("never", lambda t: ABSTAIN)]
    unlabeled = pd.DataFrame({"row_id": ["u1", "u2", "u3", "u4"],
                              "text": ["good", "bad", "good bad", "meh"]})
    gold = pd.DataFrame({"text": ["good", "good", "bad", "bad good"],
                         "label": ["pos", "neg", "neg", "neg"]})
    rows, report = weak_labels(unlabeled, gold, lfs, ["neg", "pos"], "majority")
    f = report["functions"]
    assert f["good"]["coverage"] == 0.5 and f["bad"]["coverage"] == 0.5
    assert f["good"]["conflicts"] == 0.25 and f["good"]["overlaps"] == 0.25
    assert f["good"]["gold_votes"] == 3 and f["good"]["gold_accuracy"] == pytest.approx(1 / 3)
    assert f["bad"]["gold_accuracy"] == 1.0 and f["never"]["gold_accuracy"] is None
    assert dict(zip(rows["row_id"], rows["label"])) == {"u1": "pos", "u2": "neg"}
    assert report["rows_covered"] == 3 and report["rows_labeled"] == 2


def test_user_module_lfs_load_and_bad_votes_are_named(tmp_path: Path):
    mod = tmp_path / "my_lfs.py"
    mod.write_text("from tasks.label.weak import keyword_lf, model_lf\n"
                   "kw = keyword_lf('pos', ['great'], name='great')\n"
                   "champ = model_lf(0.8)\n"
                   "def lf_short(text):\n    return 'neg' if len(text) < 4 else None\n"
                   "def helper(text):\n    return 'pos'\n")
    lfs = load_lfs(mod)
    assert [lf.name for lf in lfs] == ["great", "champion", "lf_short"]
    assert lfs[1].apply(["x"]) == [None]  # no model bound: abstains
    (tmp_path / "bad.py").write_text("def lf_x(text):\n    return 'maybe'\n")
    with pytest.raises(UserError, match="'lf_x' returned 'maybe'"):
        label_matrix(load_lfs(tmp_path / "bad.py"), ["a"], ["neg", "pos"])
    with pytest.raises(UserError, match="no labeling function"):
        (tmp_path / "none.py").write_text("x = 1\n")
        load_lfs(tmp_path / "none.py")


class _Model:
    """A fixed-answer classifier: 'pos' for texts with 'good', else 'neg', at 0.99."""

    classes_ = ("neg", "pos")

    def predict_proba(self, texts):
        return np.array([[0.01, 0.99] if "good" in t else [0.99, 0.01] for t in texts])


def test_pseudo_label_threshold_cap_and_class_mix():
    proba = np.array([[0.1, 0.9], [0.02, 0.98], [0.97, 0.03], [0.6, 0.4], [0.01, 0.99], [0.99, 0.01]])
    texts = list("abcdef")
    out = pseudo_label(proba, texts, ["neg", "pos"], threshold=0.95)
    # eligible: pos b, e; neg c, f -> two per class, most confident first
    assert out["text"].tolist() == ["e", "f", "b", "c"]
    assert pseudo_label(proba, texts, ["neg", "pos"], 0.95, max_rows=2)["text"].tolist() == ["e", "f"]
    skew = pseudo_label(proba, texts, ["neg", "pos"], 0.95, class_shares={"neg": 1, "pos": 2})
    assert sorted(skew["label"]) == ["neg", "pos", "pos"]  # 1:2 kept: the total shrinks to fit
    assert pseudo_label(proba[:2], texts[:2], ["neg", "pos"], 0.95).empty  # no confident neg


def test_weak_and_pseudo_rows_never_reach_val_or_test(monkeypatch):
    df = synthetic(300, seed=5)
    df["text"] = [f"{t} {i}" for i, t in enumerate(df["text"])]
    clean = _clean(df)
    clean.loc[clean.index[150:], "label"] = None  # half unlabeled
    split = dict(zip(clean["row_id"], split_names(clean, Params().shard)))
    for kind in ("weak", "pseudo"):
        p = _params(issues="ignore", use_weak=True, functions=None, pseudo={  # check: its own tests
            "enabled": kind == "pseudo", "threshold": 0.9, "check": False})
        if kind == "weak":
            monkeypatch.setattr("tasks.label.weak.load_lfs", lambda path: [
                keyword_lf("pos", ["good", "great", "excellent", "lovely", "wonderful", "fun"]),
                keyword_lf("neg", ["bad", "terrible", "awful", "boring", "dull", "poor"])])
            p = p.model_copy(update={"label": p.label.model_copy(update={"functions": "lfs.py"})})
        monkeypatch.setattr("textloop.pipeline.label_steps._model", lambda project, p: _Model())
        project = type("P", (), {"path": staticmethod(lambda rel: Path(rel))})()
        out = extend(project, p, clean, *split_trusted(clean, p.label))
        machine = out.labeled[out.labeled["label_origin"] == kind]
        assert len(machine) > 10 and {split[i] for i in machine["row_id"]} == {"train"}
        queued_eval = [i for i in out.queue["row_id"] if split[i] != "train"]
        assert len(queued_eval) == sum(split[i] != "train" for i in clean.loc[150:, "row_id"])
        assert out.report["labeled_by_origin"][kind] == len(machine)
        shards, _ = assign_splits(out.labeled, p.shard)
        assert set(shards.loc[shards["label_origin"] == kind, "split"]) == {"train"}
        assert (human_rows(shards)["label_origin"] == "gold").all()
        assert training_rows(shards, use_weak=False, use_pseudo=False)["label_origin"].eq("gold").all()


def test_shard_forces_machine_labels_into_train_even_if_hashed_to_test():
    rows = pd.DataFrame({"row_id": [f"r{i}" for i in range(200)],
                         "text": [f"text {i}" for i in range(200)], "label": ["pos", "neg"] * 100,
                         "source": "f", "origin": "x", "role": "data", "label_origin": "weak"})
    out, _ = assign_splits(rows, Params().shard)
    assert set(out["split"]) == {"train"}


def test_editing_the_lf_module_changes_the_label_fingerprint(tmp_path: Path):
    stage_file, module = tmp_path / "label.json", tmp_path / "my_lfs.py"
    stage_file.write_text(json.dumps({"stage": "label"}))
    module.write_text("A = 1\n")
    add_user_code(stage_file, {"my_lfs.py": module})
    first = json.loads(stage_file.read_text())["user_code"]["my_lfs.py"]
    module.write_text("A = 2\n")
    add_user_code(stage_file, {"my_lfs.py": module})
    assert json.loads(stage_file.read_text())["user_code"]["my_lfs.py"] not in (first, "missing")
    module.unlink()
    add_user_code(stage_file, {"my_lfs.py": module})
    assert json.loads(stage_file.read_text())["user_code"] == {"my_lfs.py": "missing"}


def test_model_lf_votes_only_when_confident():
    lf = model_lf(0.95, model=_Model())
    assert lf.apply(["good one", "meh"]) == ["pos", "neg"]
    assert model_lf(0.999, model=_Model()).apply(["good"]) == [None]


def test_pseudo_check_cross_validates_self_training_on_gold_rows():
    gold, pool = synthetic(80, seed=7), synthetic(300, seed=8)
    check = pseudo_check(gold["text"].tolist(), gold["label"].tolist(), pool["text"].tolist(),
                         threshold=0.6, max_share=2.0, folds=4, seed=0)
    assert check["folds"] == 4 and check["pseudo_rows"] > 0
    assert check["helps"] == helps_beyond_noise(check["gain"], check["gain_se"], 1.0)
    assert check["gain"] == pytest.approx(check["accuracy_with"] - check["accuracy_without"])
    assert len(check["fold_gains"]) == 4
    assert 0.5 < check["accuracy_without"] <= 1.0
    none = pseudo_check(gold["text"].tolist(), gold["label"].tolist(), pool["text"].tolist(),
                        threshold=1.0, max_share=2.0, folds=4, seed=0)  # nothing qualifies
    assert none["pseudo_rows"] == 0 and none["accuracy_with"] == none["accuracy_without"]
    assert pseudo_check(["a"], ["pos"], ["b"])["helps"] is False  # one class: no check possible


def test_a_gain_counts_only_beyond_its_standard_error():
    assert helps_beyond_noise(0.010, 0.004, 1.0) is True
    assert helps_beyond_noise(0.010, 0.012, 1.0) is False  # within the folds' noise
    assert helps_beyond_noise(0.010, 0.004, 3.0) is False
    assert helps_beyond_noise(0.0, 0.0, 1.0) is False  # no gain: nothing to keep
    assert helps_beyond_noise(0.0, 0.0, 0.0) is True  # 0: any gain >= 0 (the old rule)
    assert helps_beyond_noise(-0.001, 0.0, 0.0) is False


def test_the_check_rejects_pseudo_rows_that_hurt_held_out_gold_rows(monkeypatch):
    """Wrong pseudo-labels (every one flipped) lower held-out gold accuracy: the check sees the
    loss on the folds it never trained on and rejects them, with or without the SE margin."""
    from tasks.label import pseudo

    real = pseudo.pseudo_label

    def flipped(*args, **kwargs):
        rows = real(*args, **kwargs)
        return rows.assign(label=rows["label"].map({"pos": "neg", "neg": "pos"}))

    monkeypatch.setattr(pseudo, "pseudo_label", flipped)
    gold, pool = synthetic(80, seed=7), synthetic(300, seed=8)
    for margin in (0.0, 1.0):
        check = pseudo_check(gold["text"].tolist(), gold["label"].tolist(), pool["text"].tolist(),
                             threshold=0.6, max_share=2.0, folds=4, seed=0, min_gain_se=margin)
        assert check["pseudo_rows"] > 0 and check["gain"] < 0
        assert check["accuracy_with"] < check["accuracy_without"]
        assert check["helps"] is False


def test_pseudo_rows_are_dropped_when_the_check_says_self_training_hurts(monkeypatch):
    df = synthetic(300, seed=5)
    df["text"] = [f"{t} {i}" for i, t in enumerate(df["text"])]
    clean = _clean(df)
    clean.loc[clean.index[150:], "label"] = None
    monkeypatch.setattr("textloop.pipeline.label_steps._model", lambda project, p: _Model())
    verdict = {"accuracy_without": 0.9, "accuracy_with": 0.8, "helps": False}
    monkeypatch.setattr("tasks.label.pseudo.pseudo_check", lambda *a, **k: verdict)
    p = _params(issues="ignore", pseudo={"enabled": True, "threshold": 0.9})
    out = extend(None, p, clean, *split_trusted(clean, p.label))
    assert out.report["labeled_by_origin"]["pseudo"] == 0 and out.report["pseudo"]["rejected"] > 10
    assert out.report["pseudo"]["check"] == verdict
    verdict["helps"] = True
    out = extend(None, p, clean, *split_trusted(clean, p.label))
    assert out.report["labeled_by_origin"]["pseudo"] == out.report["pseudo"]["rows"] > 10


def test_pseudo_rows_count_for_the_nb_ratios_but_never_set_the_weights():
    """pseudo_nb_fit: without pseudo rows it is plain NB-LR on the gold rows; a term only the
    pseudo rows hold gets no weight (weights come from gold rows); pseudo rows move the ratios."""
    import scipy.sparse as sp

    from tasks.label.pseudo import pseudo_nb_fit
    from tasks.train.baseline import NBLogisticRegression

    gold = sp.csr_matrix(np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]],
                                  dtype=np.float32))  # columns: good, bad, fine, superb
    y = ["pos", "pos", "neg", "neg"]
    plain = NBLogisticRegression(C=10.0, max_iter=1000, random_state=0).fit(gold, y)
    none = pseudo_nb_fit(gold, y, sp.csr_matrix((0, 4), dtype=np.float32), [], C=10.0, seed=0)
    np.testing.assert_allclose(none.coef_, plain.coef_, rtol=1e-6)
    pseudo = sp.csr_matrix(np.array([[0, 0, 1, 1]] * 6, dtype=np.float32))  # "fine superb": pos
    more = pseudo_nb_fit(gold, y, pseudo, ["pos"] * 6, C=10.0, seed=0)
    assert more.coef_[0, 3] == 0.0  # superb: in no gold row, so no weight
    assert plain.coef_[0, 2] == pytest.approx(0.0, abs=1e-6)  # fine: one pos, one neg gold row
    assert more.coef_[0, 2] > plain.coef_[0, 2]  # pseudo rows say fine leans pos
    assert list(more.classes_) == ["neg", "pos"]
    with pytest.raises(ValueError, match="at least 2 classes"):
        pseudo_nb_fit(gold[:2], y[:2], pseudo, ["neg"] * 6)


def test_the_check_on_matrices_judges_nb_ratio_pseudo_labels_too():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from tasks.label.pseudo import pseudo_check_matrix

    gold, pool = synthetic(80, seed=7), synthetic(300, seed=8)
    X = TfidfVectorizer().fit_transform([*gold["text"], *pool["text"]])
    check = pseudo_check_matrix(X[:80], gold["label"].tolist(), X[80:], threshold=0.5, folds=4,
                                seed=0, use="nb_ratios", C=10.0, pool_share=0.5)
    assert check["folds"] == 4 and check["pseudo_rows"] == pytest.approx(150, abs=2)  # half the pool
    assert check["helps"] == helps_beyond_noise(check["gain"], check["gain_se"], 1.0)
    with pytest.raises(ValueError, match="rows or nb_ratios"):
        pseudo_check_matrix(X[:80], gold["label"].tolist(), X[80:], use="weights")


def test_the_nb_ratio_check_compares_with_nb_lr_on_the_gold_rows_alone():
    """The reference is what train fits without pseudo rows (NB-LR on the gold folds), not the
    plain logistic regression that labels the pool: the gain credited is the pseudo rows'."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import StratifiedKFold

    from tasks.label.pseudo import pseudo_check_matrix
    from tasks.train.baseline import NBLogisticRegression

    gold, pool = synthetic(80, seed=7), synthetic(300, seed=8)
    X = TfidfVectorizer().fit_transform([*gold["text"], *pool["text"]]).tocsr()
    y = np.asarray(gold["label"].tolist(), dtype=object)
    check = pseudo_check_matrix(X[:80], y, X[80:], threshold=0.5, folds=4, seed=0,
                                use="nb_ratios", C=10.0, pool_share=0.5)
    hits = 0
    for fit, held in StratifiedKFold(4, shuffle=True, random_state=0).split(X[:80], y):
        ref = NBLogisticRegression(C=10.0, max_iter=1000, random_state=0).fit(X[fit], y[fit])
        hits += int((ref.predict(X[held]) == y[held]).sum())
    assert check["accuracy_without"] == pytest.approx(hits / 80)
