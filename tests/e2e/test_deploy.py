"""Deploy: the gate refuses do-nothing models, compares only rows neither model trained on, names
MLflow cannot hold are refused up front, hostile class and model names survive MLflow, and the
reports (deploy.json, the run summary) tell what happened."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tasks.deploy import (
    ChampionView,
    decide,
    gate,
    row_hashes,
    unchanged,
    untrained_mask,
)
from tasks.evaluate.metrics import gate_metric
from tasks.shard.shard_parts import split_report
from textloop.core.config import DeployConfig, apply_overrides, model_name_problem
from textloop.core.errors import UserError
from textloop.core.splits import class_balance
from textloop.pipeline.tracking import filter_literal, mlflow_key

REPO = Path(__file__).resolve().parents[2]
HOSTILE = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(alphabet="'\"#@/:?% \t.-_aé中\\+", min_size=1, max_size=30),
    st.sampled_from(["o'brien", 'say "hi"', "c#", "c++", ".net", "node.js", "..x", " lead",
                     "a" * 300, "b" * 256, "résumé-分类", "50%_off", "x@champion", "tab\there"]),
)


# --- the do-nothing model ------------------------------------------------------

def test_majority_model_is_refused_naming_the_dead_class():
    y_true = ["ok"] * 396 + ["complaint"] * 4
    y_pred = ["ok"] * 400  # accuracy 0.99 = the majority rate
    metric = gate_metric("auto", y_true, 0.05)
    assert metric == "f1_macro"
    decision = decide(y_true, y_pred, ["complaint", "ok"], None, DeployConfig(), metric)
    assert decision.outcome == "refused" and not decision.promote
    assert decision.candidate_score == pytest.approx((2 * 0.99 / 1.99) / 2, abs=1e-6)  # 0.4975
    assert "recall 0 on class 'complaint' (4 test rows)" in decision.reason
    assert "predicts a single class ('ok') for all 400 test rows" in decision.reason
    assert decision.problems[0] == "recall 0 on class 'complaint' (4 test rows)"
    assert decision.reason == (
        "refused: recall 0 on class 'complaint' (4 test rows); predicts a single class ('ok') for "
        "all 400 test rows (no champion yet; f1_macro 0.4975 < min_score 0.5)")


def test_recall_zero_below_min_class_support_is_not_a_refusal():
    y_true = ["a"] * 50 + ["b"] * 48 + ["c"] * 2
    y_pred = ["a"] * 50 + ["b"] * 48 + ["a"] * 2
    ok = decide(y_true, y_pred, ["a", "b", "c"], None, DeployConfig(min_class_support=3),
                "accuracy")
    assert ok.problems == [] and ok.promote
    strict = decide(y_true, y_pred, ["a", "b", "c"], None, DeployConfig(min_class_support=2),
                    "accuracy")
    assert strict.problems == ["recall 0 on class 'c' (2 test rows)"] and not strict.promote


def test_split_report_warns_on_imbalance():
    df = pd.DataFrame({"label": ["ok"] * 396 + ["complaint"] * 4, "split": "train"})
    report = split_report(df, 400, df.iloc[:0])
    assert report["imbalanced"] is True and report["minority_class"] == "complaint"
    assert report["imbalance_ratio"] == 99.0 and report["minority_share"] == 0.01
    assert "'complaint' is 1.00% of the train split" in report["warnings"][0]
    balanced = class_balance({"a": 50, "b": 45}, 0.05)
    assert balanced["imbalanced"] is False and balanced["imbalance_ratio"] == pytest.approx(1.1111)
    assert gate_metric("auto", ["a"] * 50 + ["b"] * 45, 0.05) == "accuracy"
    assert gate_metric("accuracy", ["ok"] * 99 + ["x"], 0.05) == "accuracy"


# --- rows neither model trained on ----------------------------------------------

def _overlap_case(min_rows: int):
    """38 test rows; the champion trained on 27 of them (the example that showed the overlap)."""
    texts = [f"review number {i} of the thing" for i in range(38)]
    y_true = ["pos" if i % 2 else "neg" for i in range(38)]
    champ_rows = row_hashes(texts[:27] + ["some other training text"])
    keep = untrained_mask(texts, row_hashes(["candidate train text"]), champ_rows)
    champ_pred = [y for y, k in zip(y_true, keep, strict=True) if k]  # perfect on the kept rows
    view = ChampionView("1", ["neg", "pos"], keep, champ_pred)
    return decide(y_true, y_true, ["neg", "pos"], view, DeployConfig(min_comparable_rows=min_rows),
                  "accuracy")


def test_gate_excludes_rows_the_champion_trained_on_and_says_so():
    too_few = _overlap_case(30)
    assert too_few.n_excluded == 27 and not too_few.comparable and too_few.champion_score is None
    assert ("only 11 test rows neither model trained on (27 excluded) < min_comparable_rows 30"
            in too_few.reason)
    compared = _overlap_case(10)
    assert compared.comparable and compared.n_compared == 11 and compared.n_excluded == 27
    assert compared.promote and compared.reason == (
        "promoted: candidate accuracy 1.0000 is equal to champion version 1 1.0000 on 11 test rows "
        "neither model trained on (27 excluded)")


def test_row_hashes_are_sorted_uint64_of_normalised_text():
    rows = row_hashes(["b  text", "a text", "b text", "<p>a text</p>"])
    assert rows.dtype == np.uint64 and len(rows) == 2 and (np.diff(rows.astype(np.float64)) > 0).all()
    assert untrained_mask(["a text", "new"], rows, None).tolist() == [False, True]


# --- the reason and summary tell the truth ---------------------------------------

def test_reason_wording_matches_the_numbers():
    cfg = DeployConfig(max_regression=0.01)
    assert "is better than champion" in gate(0.82, 0.80, True, cfg, "accuracy").reason
    within = gate(0.795, 0.80, True, cfg, "accuracy")
    assert within.promote and "within max_regression 0.01 of champion" in within.reason
    worse = gate(0.78, 0.80, True, cfg, "accuracy")
    assert not worse.promote and "is worse than champion" in worse.reason


def test_refused_candidate_is_not_shown_live():
    y = ["a" if i % 2 else "b" for i in range(40)]
    keep = np.ones(40, dtype=bool)
    view = ChampionView("3", ["a", "b"], keep, y)  # the champion is perfect
    decision = decide(y, ["a"] * 40, ["a", "b"], view, DeployConfig(), "accuracy")
    decision.candidate_version = "4"
    assert decision.outcome == "refused" and decision.live_version == "3"
    summary = decision.summary("m")
    assert summary["model"] == "m v3 (candidate v4 refused)"
    assert summary["deploy"] == decision.reason and summary["promoted"] == "false"
    assert decision.to_dict()["reason"] == decision.reason
    same = unchanged("2", "2", "accuracy")
    assert same.reason == "unchanged, already version 2 (it is the champion)"
    assert unchanged("4", "3", "accuracy").summary("m")["model"] == "m v3 (candidate v4 unchanged)"


# --- names MLflow can hold -------------------------------------------------------

@pytest.mark.parametrize("name,problem", [
    ("team/sentiment", "cannot contain /"), ("a:b", "cannot contain :"), ("x@y", "cannot contain @"),
    ("a?b", "contains '?'"), (" lead", "whitespace"), ("..x", "starts with '..'"),
    ("both'\"", "both ' and \""), ("a" * 257, "257 characters"), ("tab\there", "'\\t'"),
])
def test_config_refuses_names_mlflow_cannot_hold(tmp_path, name, problem):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_bytes()
    with pytest.raises(UserError, match="deploy.model_name") as info:
        apply_overrides(params, {"deploy.model_name": name})
    assert problem in str(info.value) and "\n" not in str(info.value)
    assert params.read_bytes() == before
    assert apply_overrides(params, {"deploy.model_name": "o'brien"}).deploy.model_name == "o'brien"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow SQLite store (tracking + registry) in tmp."""
    from tests.support.fixtures import mlflow_sandbox

    with mlflow_sandbox(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=HOSTILE)
@example(name="o'brien")
@example(name='say "hi" #1')
@example(name="b" * 256)
@example(name="résumé 分类 c#")
def test_hostile_model_names_work_or_are_refused(store, name):
    from mlflow import MlflowClient

    from textloop.pipeline.registry import current_champion, version_with_hash

    if model_name_problem(name) is not None:
        with pytest.raises(ValueError, match="cannot be an MLflow model name"):
            DeployConfig(model_name=name)  # refused in the config, before the first stage
        return
    client = MlflowClient()
    if not client.search_registered_models(f"name={filter_literal(name)}"):
        client.create_registered_model(name)
    model_hash = uuid.uuid4().hex
    version = client.create_model_version(name, source=store, tags={"model_hash": model_hash})
    found = version_with_hash(client, name, model_hash)
    assert found is not None and found.name == name and found.version == version.version
    assert version_with_hash(client, name, uuid.uuid4().hex) is None
    client.set_registered_model_alias(name, "champion", version.version)
    champ = current_champion(client, name)
    assert champ is not None and champ.name == name and champ.version == version.version


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(HOSTILE, min_size=1, max_size=4, unique=True))
def test_hostile_class_names_become_distinct_metric_keys(store, names):
    import mlflow

    keys = [mlflow_key("shard.splits.train.classes", n) for n in names]
    assert len(set(keys)) == len(keys) and all(len(k) <= 250 for k in keys)
    with mlflow.start_run() as run:
        mlflow.log_metrics({k: float(i) for i, k in enumerate(keys)})
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert logged == {k: float(i) for i, k in enumerate(keys)}


def test_filter_literal_quotes_with_the_kind_absent():
    assert filter_literal("o'brien") == '"o\'brien"' and filter_literal('say "hi"') == "'say \"hi\"'"
    with pytest.raises(UserError, match="both"):
        filter_literal("it's \"x\"")


# --- through the real stages and the registry -------------------------------------------------

def _project(root: Path, monkeypatch, rows: pd.DataFrame, **overrides) -> object:
    """A project folder (params.yaml + dvc.yaml, no DVC run) over a CSV, env isolated."""
    from tests.support.e2e_project import isolate_env
    from textloop.core.layout import Project

    root.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    rows.to_csv(root / "data.csv", index=False)
    (root / "data" / "07_feedback").mkdir(parents=True)
    apply_overrides(root / "params.yaml", {
        "ingest.source": "data.csv", "optimize.n_trials": 0, "train.tfidf.min_df": 1,
        "deploy.min_score": 0.0, **overrides})
    isolate_env(monkeypatch, root)
    return Project(root)


@pytest.fixture
def tracking_restored():
    """The stages set MLflow's global tracking URI to the project's store: undo it after."""
    import mlflow

    saved = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(saved)
    mlflow.set_registry_uri(saved)


def _run_stages(project) -> None:
    from textloop.pipeline.dag import stage_names
    from textloop.pipeline.stages import run_stage

    for name in stage_names(project.root):  # dvc.yaml order (this folder is no DVC repo)
        run_stage(name, project)


def _deploy(project):
    import mlflow

    from textloop.pipeline import tracking
    from textloop.pipeline.deploy_step import deploy, resolve_inputs

    exp = tracking.setup(project)
    mlflow.set_registry_uri(project.tracking_uri)
    with mlflow.start_run(experiment_id=exp) as run:
        pass
    return deploy(resolve_inputs(project), run.info.run_id, {})


def _lang_rows(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    words = {"c#": ["linq", "dotnet", "async", "nuget"], "java": ["jvm", "spring", "maven", "gradle"]}
    rows = [(f"{' '.join(rng.choice(words[lab], 3))} question {i}", lab, 1.0)
            for i, lab in enumerate(["c#", "java"] * (n // 2))]
    return pd.DataFrame(rows, columns=["text", "label", "confidence"])


def test_hash_and_quote_labels_and_names_through_stages_and_registry(tmp_path, monkeypatch,
                                                                      tracking_restored):
    import mlflow

    from textloop.pipeline import registry

    project = _project(tmp_path / "p", monkeypatch, _lang_rows(), **{"deploy.model_name": "o'brien"})
    _run_stages(project)  # shard logs class-balance metrics for `c#`: no "Invalid metric name"
    metrics = json.loads(project.path("metrics/evaluate.json").read_text())  # the full report
    assert metrics["n_test"] > 0
    ci = metrics["ci"]["accuracy"]  # CIs, ECE + reliability plot, slices, behaviour
    assert ci["low"] <= metrics["accuracy"] <= ci["high"] and 0 <= metrics["ece"] <= 1
    assert project.path("metrics/plots/reliability.png").stat().st_size > 0
    min_rows = project.params().evaluate.slices.min_rows
    assert all(row["rows"] >= min_rows for dim in metrics["slices"].values() for row in dim.values())
    assert {"column": "rating", "reason": "not a column of the test rows"} in metrics["slices_skipped"]
    headline = json.loads(project.path("metrics/metrics.json").read_text())
    assert set(headline) == {"accuracy", "accuracy_low", "accuracy_high", "f1_macro", "ece", "n_test"}
    assert metrics["behaviour"] is None  # no tests_behaviour.yaml in this folder: none run
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`textloop.stage`='shard'")
    assert any(c.startswith("metrics.shard.splits.train.classes.c-") for c in runs.columns)
    assert "metrics.shard.splits.train.classes.java" in runs.columns

    decision_path = project.path("metrics/deploy.json")
    results = []
    for _ in range(3):
        results.append(_deploy(project))
        assert decision_path.is_file()
        written = json.loads(decision_path.read_text())
        decision_path.unlink()  # the next deploy must write it again
        assert written["reason"] == results[-1]["reason"]
    first, second, third = results
    assert first["registered"] and first["promoted"] and first["version"] == "1"
    for again in (second, third):
        assert again["registered"] is False and again["outcome"] == "unchanged"
        assert again["reason"] == "unchanged, already version 1 (it is the champion)"
    client = registry.mlflow_client()
    assert [v.version for v in client.search_model_versions('name="o\'brien"')] == [1]
    with registry.downloaded("o'brien", "1") as local:
        from textloop.core.splits import read_split

        stored = registry.trained_rows(local)
        train = read_split(project.path("data/04_shards"), "train")
        assert np.array_equal(stored, row_hashes(train["text"]))
        test = read_split(project.path("data/04_shards"), "test")
        assert len(registry.predict_labels(local, test["text"].tolist())) == len(test)

    # a changed model is gated against v1 on the same rows (none excluded: one salt, one split)
    apply_overrides(project.params_path, {"train.tfidf.C": 2.0, "deploy.min_comparable_rows": 1})
    from textloop.pipeline.stages import run_stage

    for name in ("train", "optimize", "evaluate"):
        run_stage(name, project)
    fourth = _deploy(project)
    decision = fourth["decision"]
    assert fourth["registered"] and fourth["candidate_version"] == "2"
    assert decision["champion_version"] == "1" and decision["comparable"]
    assert decision["n_compared"] == decision["n_test"] == len(test) and decision["n_excluded"] == 0
    assert decision["champion_score"] is not None
    assert decision["rule"] == "non_inferior" and decision["bootstrap_samples"] == 1000
    assert decision["diff_ci_low"] <= decision["diff"] <= decision["diff_ci_high"]
    assert decision["diff"] == pytest.approx(decision["candidate_score"] - decision["champion_score"])
    tags = client.get_model_version("o'brien", "2").tags
    assert tags["gate.rule"] == "non_inferior" and float(tags["gate.p_value"]) <= 1
    assert tags["test_accuracy_ci"].count(",") == 1
    shown = json.loads(tags.get("test_slices", "{}"))  # a small test set: few slices reach min_rows
    assert all(rows >= project.params().evaluate.slices.min_rows for rows, *_ in shown.values())
    assert "rating: not a column of the test rows" in tags["test_slices_skipped"]
    assert fourth["version"] == ("2" if fourth["promoted"] else "1")
    assert json.loads(decision_path.read_text())["reason"] == fourth["reason"]


@pytest.mark.slow  # two full stage passes (~100 s on the loaded machine)
def test_shadow_mode_sets_a_passing_version_as_challenger_and_keeps_the_champion(
        tmp_path, monkeypatch, tracking_restored):
    from textloop.pipeline import registry

    project = _project(tmp_path / "p", monkeypatch, _lang_rows(), **{
        "deploy.model_name": "shadowed", "deploy.mode": "shadow",
        "deploy.max_regression": 1.0})
    _run_stages(project)
    first = _deploy(project)  # no champion yet: the first version serves at once
    assert (first["version"], first["alias"], first["promoted"]) == ("1", "champion", True)
    apply_overrides(project.params_path, {"train.tfidf.C": 2.0})  # another model
    _run_stages(project)
    second = _deploy(project)
    assert (second["candidate_version"], second["alias"], second["promoted"]) == (
        "2", "challenger", False)
    assert second["version"] == "1" and second["reason"].startswith(
        "passed the gate, set as challenger (deploy.mode shadow)")
    client = registry.mlflow_client()
    aliases = client.get_registered_model("shadowed").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "challenger": "2"}
