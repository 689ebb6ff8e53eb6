"""Evidence you can trust: near-duplicate-aware splits, bootstrap CIs and calibration, the paired gate
(bootstrap CI of the difference + McNemar), slices, behavioural tests. Tiny frames, in-process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.deploy import ChampionView, Evidence, decide, gate
from tasks.evaluate.behaviour import BehaviourSuite, load_suite, perturb, run_suite
from tasks.evaluate.metrics import score
from tasks.evaluate.slices import length_bucket, slice_keys, slice_metrics
from tasks.evaluate.stats import bootstrap_ci, calibration, mcnemar, paired_bootstrap
from tasks.shard.shard_parts import assign_splits, split_report
from textloop.core.config import DeployConfig, NearDuplicatesConfig, ShardConfig, SlicesConfig
from textloop.core.errors import UserError

WORDS = ["film", "story", "actor", "scene", "plot", "music", "camera", "light", "dialogue",
         "ending", "director", "script", "character", "moment", "silence", "night", "city",
         "river", "window", "friend", "letter", "garden", "train", "summer", "winter", "morning",
         "voice", "mirror", "table", "door", "road", "field"]


def _texts(n: int, seed: int = 0, words: int = 30) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, words)) + f" number{i}" for i in range(n)]


def _frame(texts: list[str], role: str = "data", prefix: str = "r") -> pd.DataFrame:
    return pd.DataFrame({"row_id": [f"{prefix}{i}" for i in range(len(texts))], "text": texts,
                         "label": ["pos" if i % 2 else "neg" for i in range(len(texts))],
                         "source": "f", "origin": "gold", "role": role})


def _variants(text: str) -> list[str]:
    """Edits that must not straddle the split: a name added, trailing punctuation."""
    return [f"John says {text}", f"{text}!!", f"{text} ."]


# --- 1. near-duplicate-aware splits -------------------------------------------------------------

def test_planted_near_duplicates_share_one_split_and_the_report_counts_them():
    base = _texts(120)
    planted = [v for t in base[:40] for v in _variants(t)]
    df = _frame(base + planted)
    cfg = ShardConfig(val_fraction=0.3, test_fraction=0.3)
    split, quarantined = assign_splits(df, cfg)
    assert quarantined.empty and len(split) == 240
    for i, t in enumerate(base[:40]):
        members = split[split["text"].isin([t, *_variants(t)])]
        assert len(members) == 4 and members["split"].nunique() == 1, members
        assert members["dup_group"].nunique() == 1
    exact, _ = assign_splits(df, cfg.model_copy(update={
        "near_duplicates": NearDuplicatesConfig(enabled=False)}))
    assert any(exact[exact["text"].isin([t, *_variants(t)])]["split"].nunique() > 1
               for t in base[:40])  # the exact rule alone lets them straddle
    report = split_report(split, len(df), quarantined)["near_duplicates"]
    assert report["groups"] == 40 and report["rows_in_groups"] == 160
    assert report["rows_moved"] == int((split["split"] != split["exact_split"]).sum()) > 0
    assert report["rows_quarantined_near_duplicate_of_test"] == 0


def test_near_duplicate_of_an_explicit_test_row_is_quarantined():
    data, test = _texts(60, seed=1), _texts(10, seed=2)
    data += [f"{test[0]}!", f"Mary says {test[1]}", test[2]]  # two near copies, one exact
    df = pd.concat([_frame(data), _frame(test, role="test", prefix="t")], ignore_index=True)
    split, quarantined = assign_splits(df, ShardConfig())
    assert sorted(quarantined["reason"]) == ["near_duplicate_of_test", "near_duplicate_of_test",
                                             "overlaps_test_set"]
    assert set(quarantined["row_id"]) == {"r60", "r61", "r62"}
    report = split_report(split, len(df), quarantined)
    assert report["rows_in"] == len(split) + len(quarantined) == 73
    assert report["near_duplicates"]["rows_quarantined_near_duplicate_of_test"] == 2


def test_unrelated_texts_stay_apart_and_adding_data_keeps_rows_put():
    cfg = ShardConfig(val_fraction=0.2, test_fraction=0.2)
    small, _ = assign_splits(_frame(_texts(100, seed=3)), cfg)
    assert small["dup_group"].nunique() == 100 and (small["split"] == small["exact_split"]).all()
    big, _ = assign_splits(_frame(_texts(100, seed=3) + _texts(100, seed=4), prefix="r"), cfg)
    merged = small.merge(big, on="text", suffixes=("_a", "_b"))
    assert len(merged) == 100 and (merged["split_a"] == merged["split_b"]).all()


# --- 2. bootstrap CIs, ECE ------------------------------------------------------------------

def _labels(n: int, acc: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows, exactly round(acc * n) of them predicted right (the wrong ones: the other class)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(["neg", "pos"], n)
    wrong = rng.permutation(n)[: n - round(acc * n)]
    pred = y.copy()
    pred[wrong] = np.where(y[wrong] == "pos", "neg", "pos")
    return y, pred


def test_bootstrap_ci_covers_the_known_value_with_the_expected_width():
    y, pred = _labels(1000, 0.8, seed=0)
    ci = bootstrap_ci(y, pred, samples=1000, seed=0)
    assert set(ci) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
    for metric, value in score(y, pred).items():
        assert ci[metric]["low"] < value < ci[metric]["high"], metric
    half = (ci["accuracy"]["high"] - ci["accuracy"]["low"]) / 2
    assert half == pytest.approx(1.96 * np.sqrt(0.8 * 0.2 / 1000), rel=0.15)  # ~0.0248
    assert bootstrap_ci(y, pred, samples=1000, seed=0) == ci  # seeded


def test_bootstrap_ci_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(200):  # 200 test sets of 200 rows drawn from a model with true accuracy 0.8
        y = rng.choice(["a", "b"], 200)
        pred = np.where(rng.random(200) < 0.8, y, np.where(y == "a", "b", "a"))
        ci = bootstrap_ci(y, pred, samples=300, seed=i, metrics=("accuracy",))["accuracy"]
        hits += ci["low"] <= 0.8 <= ci["high"]
    assert 0.88 <= hits / 200 <= 0.99, hits


def test_accuracy_on_a_small_test_set_all_right_has_an_interval_not_a_point():
    """13 of 13 right: the percentile bootstrap said 1.000–1.000; Wilson's interval does not
    claim a certainty 13 rows cannot give (and neither does a slice's)."""
    y = ["billing"] * 5 + ["technical"] * 4 + ["account"] * 4
    ci = bootstrap_ci(y, y, samples=1000, seed=0)["accuracy"]
    assert ci["low"] == pytest.approx(0.7719, abs=1e-4) and ci["high"] == 1.0
    wrong = bootstrap_ci(y, ["billing" if t != "billing" else "account" for t in y], 1000, 0)
    assert wrong["accuracy"]["low"] == 0.0
    assert wrong["accuracy"]["high"] == pytest.approx(0.2281, abs=1e-4)
    row = slice_metrics(y, y, {"source": np.array(["a"] * 13)}, 200, 0, 10)["source"]["a"]
    assert row["ci"]["accuracy"]["low"] == pytest.approx(0.7719, abs=1e-4)


def test_the_served_versions_evidence_says_how_many_test_rows_and_when_that_is_few():
    from textloop.serve.evidence import evidence_of

    ev = evidence_of({"test_accuracy": "1.0", "test_accuracy_ci": "0.771905,1.0",
                      "test_rows": "13"})
    assert ev["rows"] == 13
    assert ev["small_test"] == "Small test set (13 rows): a difference of about 27.7% accuracy " \
                              "is within noise."
    assert evidence_of({"test_rows": "25000"})["small_test"] is None
    assert evidence_of({})["rows"] is None and evidence_of({})["small_test"] is None


def test_expected_calibration_error_of_an_overconfident_model():
    correct = np.array([True] * 6 + [False] * 4)
    cal = calibration(np.full(10, 0.9), correct, bins=10)
    assert cal["ece"] == pytest.approx(0.3)
    assert [b["rows"] for b in cal["bins"]] == [0] * 9 + [10]
    assert cal["bins"][9]["accuracy"] == pytest.approx(0.6)
    perfect = calibration(np.array([1.0, 1.0, 0.5, 0.5]), [True, True, True, False], bins=2)
    assert perfect["ece"] == pytest.approx(0.0)


# --- 3. the paired gate --------------------------------------------------------------------------

def test_mcnemar_exact_p_value_on_the_discordant_rows():
    y = ["a"] * 30
    cand = ["a"] * 30
    champ = ["b"] * 10 + ["a"] * 20  # the candidate alone is right on 10 rows, never the reverse
    got = mcnemar(y, cand, champ)
    assert got == {"a_only": 10, "b_only": 0, "p_value": pytest.approx(2 * 0.5 ** 10)}
    assert mcnemar(y, cand, cand)["p_value"] == 1.0


def test_paired_bootstrap_of_identical_models_is_exactly_zero():
    y, pred = _labels(300, 0.7, seed=1)
    assert paired_bootstrap(y, pred, pred, "f1_macro", 200, 0) == {"diff": 0.0, "low": 0.0,
                                                                    "high": 0.0}


def _paired_case(n: int, champ_acc: float, gain: int, seed: int = 0):
    """Champion right on round(champ_acc * n) rows; the candidate fixes `gain` of its errors and
    breaks `gain // 2` of its right answers (net +gain/2 rows)."""
    y, champ = _labels(n, champ_acc, seed)
    cand = champ.copy()
    wrong, right = np.flatnonzero(champ != y), np.flatnonzero(champ == y)
    cand[wrong[:gain]] = y[wrong[:gain]]
    broken = right[: gain // 2]
    cand[broken] = np.where(y[broken] == "pos", "neg", "pos")
    return y, cand, ChampionView("1", ["neg", "pos"], np.ones(n, dtype=bool), list(champ))


def test_gate_refuses_a_candidate_better_by_point_but_not_significantly():
    y, cand, view = _paired_case(60, 0.8, gain=4)  # +2 rows of 60: +0.033 accuracy
    cfg = DeployConfig(min_comparable_rows=10, max_regression=0.005)
    old = gate(score(y, cand)["accuracy"], score(y, view.predicted)["accuracy"], True, cfg,
               "accuracy")
    assert old.promote  # the point-estimate rule would promote it
    d = decide(y, cand, ["neg", "pos"], view, cfg, "accuracy", Evidence(samples=1000, seed=0))
    assert d.outcome == "refused" and d.rule == "non_inferior"
    assert d.diff == pytest.approx(2 / 60) and d.diff_ci_low < -0.005 < d.diff_ci_high
    assert (d.candidate_only_correct, d.champion_only_correct) == (4, 2)
    assert d.p_value == pytest.approx(0.6875)  # binomtest(4, 6): two-sided exact
    assert d.note.startswith("test set too small to show a difference of 0.0383 (60 rows")
    assert "paired difference +0.0333" in d.reason and "McNemar p=0.688" in d.reason
    record = d.to_dict()
    for key in ("candidate_score", "champion_score", "diff", "diff_ci_low", "diff_ci_high",
                "p_value", "rule", "note"):
        assert record[key] is not None, key


def test_gate_promotes_a_clearly_better_candidate_under_both_rules():
    y, cand, view = _paired_case(2000, 0.8, gain=200)  # +100 rows of 2000: +5 points
    for rule in ("non_inferior", "superior"):
        cfg = DeployConfig(rule=rule)
        d = decide(y, cand, ["neg", "pos"], view, cfg, "accuracy", Evidence(samples=1000))
        assert d.promote and d.diff == pytest.approx(0.05) and d.diff_ci_low > 0, d.reason
        assert d.p_value < 1e-6 and d.note == ""


def test_superior_rule_refuses_an_equal_candidate_that_non_inferior_accepts():
    y, cand, view = _paired_case(2000, 0.8, gain=0)
    lenient = decide(y, cand, ["neg", "pos"], view, DeployConfig(), "accuracy", Evidence())
    strict = decide(y, cand, ["neg", "pos"], view, DeployConfig(rule="superior"), "accuracy",
                    Evidence())
    assert lenient.promote and not strict.promote
    assert "rule superior: CI lower bound +0.0000 <= +0.0000" in strict.reason


# --- 4. slices -------------------------------------------------------------------------------

def test_slice_keys_and_metrics_with_counts_and_cis():
    assert length_bucket(np.array([5, 100, 499, 500, 9000]), [100, 500]).tolist() == [
        "<100", "100-500", "100-500", ">=500", ">=500"]
    frame = pd.DataFrame({"text": ["x" * 50] * 6 + ["y" * 150] * 4,
                          "source": ["a"] * 5 + ["b"] * 5, "rating": [7.0] * 9 + [None]})
    keys, skipped = slice_keys(frame, SlicesConfig(length_chars=[100], min_rows=5,
                                                   columns=["source", "rating", "origin"]))
    assert skipped == [{"column": "origin", "reason": "not a column of the test rows"}]
    assert keys["rating"].tolist() == ["7"] * 9 + ["(missing)"]
    y = ["p"] * 10
    pred = ["p"] * 5 + ["n"] * 5
    table = slice_metrics(y, pred, keys, samples=200, seed=0, min_rows=5)
    assert table["source"]["a"]["rows"] == 5 and table["source"]["a"]["accuracy"] == 1.0
    assert table["source"]["b"]["accuracy"] == 0.0
    assert table["length"]["<100"]["rows"] == 6 and "(missing)" not in table["rating"]
    assert "100-" not in str(table["length"]) and set(table["length"]) == {"<100"}  # 4 rows
    low = table["source"]["a"]["ci"]["accuracy"]["low"]  # 5 of 5 right is not a certainty
    assert low == pytest.approx(0.5655, abs=1e-4) and table["source"]["a"]["ci"]["accuracy"][
        "high"] == 1.0


def test_a_slice_regression_blocks_promotion_when_configured():
    n = 400
    y, champ = _labels(n, 0.8, seed=3)
    source = np.array(["a"] * 300 + ["b"] * 100, dtype=object)
    cand = champ.copy()
    fix = np.flatnonzero((champ != y) & (source == "a"))  # better on a ...
    cand[fix] = y[fix]
    breaks = np.flatnonzero((champ == y) & (source == "b"))[:20]  # ... 20 points worse on b
    cand[breaks] = np.where(y[breaks] == "pos", "neg", "pos")
    view = ChampionView("1", ["neg", "pos"], np.ones(n, dtype=bool), list(champ))
    ev = Evidence(samples=500, slices={"source": source}, slice_min_rows=50)
    off = decide(y, cand, ["neg", "pos"], view, DeployConfig(), "accuracy", ev)
    assert off.promote and {d["slice"] for d in off.slice_diffs} == {"source=a", "source=b"}
    on = decide(y, cand, ["neg", "pos"], view, DeployConfig(max_slice_regression=0.05),
                "accuracy", ev)
    assert on.outcome == "refused"
    assert on.problems == [("slice source=b (100 rows): accuracy "
                           f"{score(y[300:], cand[300:])['accuracy']:.4f} is 0.2000 below the "
                           f"champion's {score(y[300:], champ[300:])['accuracy']:.4f} "
                           "(> max_slice_regression 0.05)")]
    small = decide(y, cand, ["neg", "pos"], view, DeployConfig(max_slice_regression=0.05),
                   "accuracy", Evidence(samples=500, slices={"source": source},
                                        slice_min_rows=101))
    assert small.promote  # the slice is below min_rows: reported, never gates


# --- 5. behavioural tests ------------------------------------------------------------------

class KeywordModel:
    """A stand-in classifier: P(pos) from counts of good/bad words; 'John' wrongly counts as bad."""

    classes_ = np.array(["neg", "pos"])
    GOOD, BAD = ("love", "great", "wonderful"), ("hate", "awful", "john", "terrible")

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            words = t.lower().replace("!", " ").replace(".", " ").split()
            score_ = sum(w in self.GOOD for w in words) - sum(w in self.BAD for w in words)
            p = 1 / (1 + np.exp(-score_))
            out.append([1 - p, p])
        return np.array(out)


def _suite(extra_inv: list[str]) -> BehaviourSuite:
    return BehaviourSuite.model_validate({
        "labels": {"positive": ["positive", "pos"], "negative": ["negative", "neg"],
                   "neutral": ["neutral"]},
        "tests": [
            {"name": "mft_pos", "type": "mft", "label": "positive",
             "texts": ["I love it", "great stuff", "so wonderful"]},
            {"name": "names", "type": "inv", "perturb": "names",
             "texts": ["Mary said it was great", *extra_inv]},
            {"name": "dir", "type": "dir", "label": "positive", "append": " but awful",
             "texts": ["I love it", "great"]},
            {"name": "mft_neutral", "type": "mft", "label": "neutral", "texts": ["meh"]}]})


def test_a_failing_behavioural_case_lowers_the_pass_rate():
    clean = run_suite(_suite([]), KeywordModel())
    assert clean["pass_rate"] == 1.0 and clean["cases"] == 6
    assert clean["tests"]["mft_neutral"] == {"type": "mft",
                                             "skipped": "the model has no class for 'neutral'"}
    # Aiko becomes John (the next name, cyclic), which the model wrongly reads as negative
    failing = run_suite(_suite(["great day with Aiko"]), KeywordModel())
    assert failing["cases"] == 7 and failing["passed"] == 6
    assert failing["pass_rate"] == pytest.approx(6 / 7)
    assert failing["tests"]["names"]["pass_rate"] == 0.5
    assert failing["tests"]["names"]["failures"] == [
        "'great day with Aiko' -> 'great day with John'"]


def test_perturbations_are_deterministic():
    assert perturb("John met Mary", "names") == "Mary met Ahmed"
    assert perturb("a wonderful film", "typos") == "a wonedrful film"
    assert perturb("great!!", "punctuation") == "great"
    assert perturb("great", "punctuation") == "great!"


def test_behaviour_minimum_in_the_gate_and_suite_errors(tmp_path):
    y = ["a", "b"] * 20
    cfg = DeployConfig(min_behaviour_pass_rate=0.9)
    low = decide(y, y, ["a", "b"], None, cfg, "accuracy", Evidence(behaviour_pass_rate=0.8))
    assert low.outcome == "refused" and low.problems == [
        "behavioural pass rate 0.800 < min_behaviour_pass_rate 0.9"]
    assert decide(y, y, ["a", "b"], None, cfg, "accuracy", Evidence(behaviour_pass_rate=0.95)).promote
    bad = tmp_path / "suite.yaml"
    bad.write_text("tests:\n  - {name: x, type: dir, texts: [a], label: pos}\n")
    with pytest.raises(UserError, match="suite.yaml: test 'x' \\(dir\\) needs append"):
        load_suite(bad)
    bad.write_text("tests:\n  - {name: x, type: typo, texts: [a]}\n")
    with pytest.raises(UserError, match="suite.yaml: tests.0.type"):
        load_suite(bad)


def test_the_shipped_starter_suite_loads_and_names_both_sentiments():
    from tests.support.e2e_project import REPO
    from textloop.cli.scaffold import TEMPLATE_DIR

    suite = load_suite(REPO / "tests_behaviour.yaml")
    assert {t.type for t in suite.tests} == {"mft", "inv", "dir"}
    assert (TEMPLATE_DIR / "tests_behaviour_yaml").read_text() == (
        REPO / "tests_behaviour.yaml").read_text()


# --- the dashboard block -----------------------------------------------------------------------

def test_evidence_block_renders_the_gate_difference_and_the_slice_table():
    from textloop.serve.dashboard import templates
    from textloop.serve.evidence import evidence_of

    tags = {"test_accuracy": "0.9", "test_accuracy_ci": "0.88,0.92", "test_ece": "0.031",
            "gate.rule": "superior", "gate.metric": "accuracy", "gate.champion_version": "3",
            "gate.diff": "0.012", "gate.diff_ci_low": "0.004", "gate.diff_ci_high": "0.02",
            "gate.p_value": "0.0021", "gate.note": "",
            "test_slices": '{"source=a": [120, 0.9, 0.85, 0.95]}'}
    ev = evidence_of(tags)
    assert ev["accuracy_ci"] == [0.88, 0.92] and ev["gate"]["diff_ci"] == [0.004, 0.02]
    assert ev["slices"] == [{"slice": "source=a", "rows": 120, "accuracy": 0.9, "low": 0.85,
                             "high": 0.95}]
    html = templates().get_template("evidence.html").render(
        served={"version": "4", "tags": tags}, evidence_of=evidence_of)
    assert "vs v3: accuracy +0.0120" in html and "[+0.0040, +0.0200]" in html
    assert "McNemar p=0.0021" in html and "<td>source=a</td><td>120</td>" in html
    assert evidence_of({})["gate"]["diff_ci"] is None and evidence_of({})["slices"] == []


def test_coded_point_metrics_equal_scikit_learns_score():
    from tasks.evaluate.stats import encode, point_metrics

    rng = np.random.default_rng(5)
    y = rng.choice(["a", "b", "c", "d"], 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.choice(["a", "b", "e"], 300))  # d never predicted
    (t, p), k = encode(y, pred)
    for mask in (np.ones(300, dtype=bool), y == "d", rng.random(300) < 0.1):
        got = point_metrics(t[mask], p[mask], k)
        assert got == pytest.approx(score(y[mask], pred[mask]), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), st.lists(st.tuples(st.integers(0, 11), st.integers(0, 13)),
                                    min_size=1, max_size=400), st.booleans())
def test_score_is_scikit_learns_metrics_bit_for_bit(k, rows, numbers):
    """The gate, evaluate and optimize score with numpy; the floats are scikit-learn's exactly
    (labels only predicted, classes never predicted, one class, ints or strings)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    name = (lambda i: i) if numbers else (lambda i: f"c{i}")
    y = [name(t % k) for t, _ in rows]
    pred = [name(p if p >= k else p % k) for _, p in rows]
    p, r, f1, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert score(y, pred) == {"accuracy": accuracy_score(y, pred), "precision_macro": p,
                              "recall_macro": r, "f1_macro": f1}


def test_score_refuses_what_scikit_learn_refuses():
    for y, pred in (([], []), (["a", "b"], ["a"]), ([1, 2], ["1", "2"])):
        with pytest.raises(ValueError):
            score(y, pred)
