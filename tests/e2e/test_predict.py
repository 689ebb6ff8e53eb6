"""`textloop predict`: prediction columns never collide with input columns, input types kept,
blank and overlong texts marked instead of predicted, accuracy printed when labels are given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tasks.predict import (
    accuracy_on_labels,
    check_no_collision,
    output_columns,
    plan_rows,
    restore_types,
    run_predict,
)
from textloop.core.config import TextConfig
from textloop.core.errors import UserError

CLASSES = ["neg", "pos"]
FIXED = np.array([[0.25, 0.75]])


def _predict(texts: list[str]) -> np.ndarray:
    """A stand-in model: 'pos' with 0.75 for every text."""
    return np.repeat(FIXED, len(texts), axis=0)


def test_blank_and_overlong_rows_get_no_ordinary_label():
    values = ["good", "", "   ", None, float("nan"), "\x00\x07", 12, "x" * 30, "<br />"]
    plan = plan_rows(values, TextConfig(max_chars=20, overlong="refuse"), {"strip_html": True})
    assert plan.reasons == [None, "empty_text", "empty_text", "empty_text", "empty_text",
                            "empty_text", "not_text", "too_long", "empty_text"]
    assert plan.rows == [0] and plan.texts == ["good"]
    cut = plan_rows(["x" * 30], TextConfig(max_chars=20, overlong="truncate"), {})
    assert cut.reasons == ["truncated"] and cut.texts == ["x" * 20]
    assert cut.limit_report["truncated"] == 1


def test_input_label_and_confidence_columns_are_kept_and_prefixed():
    df = pd.DataFrame({"id": pd.array([1, 2, 3], dtype="Int64"), "text": ["a", " ", "b"],
                       "label": ["pos", "neg", "neg"], "confidence": [0.9, 0.8, 0.7]})
    out, counts = run_predict(df, "text", CLASSES, _predict, TextConfig(), {}, "7")
    assert list(out.columns) == ["id", "text", "label", "confidence", *output_columns(CLASSES)]
    assert output_columns(CLASSES) == ["pred_label", "pred_confidence", "pred_proba_neg",
                                       "pred_proba_pos", "pred_model_version", "pred_reason"]
    pd.testing.assert_frame_equal(out[df.columns], df)  # input untouched, types kept
    assert out["pred_label"].tolist() == ["pos", None, "pos"]
    assert out["pred_confidence"].tolist()[0::2] == [0.75, 0.75]
    assert np.isnan(out["pred_confidence"][1])
    assert out["pred_reason"].tolist() == [None, "empty_text", None]
    assert counts["rows"] == 3 and counts["predicted"] == 2
    assert counts["reasons"] == {"empty_text": 1}
    acc = accuracy_on_labels(out, "label")
    assert acc == {"label_col": "label", "rows": 2, "correct": 1, "accuracy": 0.5}
    assert accuracy_on_labels(out, "nope") is None


def test_output_that_would_collide_is_refused():
    with pytest.raises(UserError, match="in.csv, column 'pred_label': the input already has"):
        check_no_collision(["text", "pred_label"], CLASSES, "in.csv")
    check_no_collision(["text", "label", "confidence", "proba_pos"], CLASSES, "in.csv")


def test_csv_columns_that_spell_numbers_exactly_become_numbers():
    df = pd.DataFrame({"id": ["1", "2", None], "zip": ["007", "12", "3"],
                       "score": ["0.5", "1.25", "3.0"], "mixed": ["1", "0.5", "2"],
                       "text": ["1", "2", "3"]}, dtype=object)
    out = restore_types(df, ["text"], Path("in.csv"))
    assert out["id"].dtype == "Int64" and out["id"].tolist()[:2] == [1, 2]
    assert out["zip"].tolist() == ["007", "12", "3"]  # a leading zero is not a number
    assert out["score"].tolist() == [0.5, 1.25, 3.0]
    assert out["mixed"].tolist() == ["1", "0.5", "2"]  # "2" would come back as "2.0"
    assert out["text"].tolist() == ["1", "2", "3"]
    assert restore_types(df, ["text"], Path("in.parquet")) is df


@pytest.fixture
def champion_project(tmp_path, monkeypatch):
    """A project with a tiny registered champion (pos/neg) and the default text policy."""
    from tests.support import fixtures as testing
    from tests.support.e2e_project import isolate_env, make_project

    root = make_project(tmp_path / "p", "data.csv", **{"deploy.model_name": "predict-cli"})
    isolate_env(monkeypatch, root)
    with testing.mlflow_sandbox(root / ".textloop"):
        folder = testing.train_tiny(testing.synthetic(300, seed=1), tmp_path / "m")
        testing.register_champion(folder, "predict-cli")
    isolate_env(monkeypatch, root)
    return root


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_predict_cli_on_a_labeled_file(champion_project, suffix):
    from textloop.cli import app

    src = champion_project / "eval.csv"
    src.write_text("id,text,label,confidence\n1,a great and wonderful film,pos,0.9\n"
                   "2,,neg,0.8\n3,terrible boring plot,neg,0.7\n4,\"   \",pos,0.5\n")
    out = champion_project / f"out{suffix}"
    result = CliRunner().invoke(app, ["predict", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 rows" in result.output and "2 predicted; empty_text 2" in result.output
    assert "label column 'label': accuracy 1.0000 on 2 rows" in result.output
    got = (pd.read_csv(out) if suffix == ".csv" else pd.read_json(out, lines=True)
           if suffix == ".jsonl" else pd.read_parquet(out))
    assert list(got.columns[:4]) == ["id", "text", "label", "confidence"]
    assert got.columns.is_unique and got["id"].tolist() == [1, 2, 3, 4]
    assert str(got["id"].dtype) in ("int64", "Int64")
    assert got["pred_label"].tolist()[0::2] == ["pos", "neg"]
    assert got["pred_label"].isna().tolist() == [False, True, False, True]
    assert got["pred_reason"].fillna("").tolist() == ["", "empty_text", "", "empty_text"]
    if suffix == ".jsonl":
        first = json.loads(out.read_text().splitlines()[0])
        assert first["id"] == 1 and first["label"] == "pos"


BOM_INPUT = "\ufefftext,id\ngreat game today,1\nterrible loss,2\n"


def test_predict_output_that_is_its_input_is_refused_and_the_input_kept(champion_project):
    """`predict same.csv --output same.csv` used to empty the input before reading it."""
    from textloop.cli import app

    src = champion_project / "same.csv"
    src.write_text(BOM_INPUT, encoding="utf-8")
    before = src.read_bytes()
    for spelled in (str(src), "./same.csv"):
        result = CliRunner().invoke(app, ["predict", str(src), "--output", spelled])
        assert result.exit_code == 2, result.output
        assert "the output is the input file; choose another --output" in result.output
        assert src.read_bytes() == before
    assert sorted(p.name for p in champion_project.glob(".same*")) == []


def test_predict_output_cut_short_leaves_the_previous_file(champion_project):
    """A write that fails half way (here a file-size limit, `ulimit -f`, as a full disk would)
    is one line, and the previous output is still whole, with no partial file left. The limit
    sits above the project's own state files (the MLflow store) and below the output."""
    import os
    import resource
    import subprocess
    import sys

    LIMIT = 8 << 20
    assert max(p.stat().st_size for p in champion_project.rglob("*") if p.is_file()) < LIMIT
    src = champion_project / "bigger.csv"  # read only: the limit does not apply to it
    src.write_text("text,id\n" + "".join(f"{'a great and wonderful film ' * 6}number {i},{i}\n"
                                          for i in range(60_000)))
    assert src.stat().st_size > LIMIT  # the output holds every input column and more
    out = champion_project / "prev_out.csv"
    out.write_text("good\n")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    run = subprocess.run([sys.executable, "-m", "textloop", "predict", str(src), "--output",
                          str(out)], cwd=champion_project, env=dict(os.environ),
                         preexec_fn=limit, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "prev_out.csv: cannot be written (File too large); the previous file is unchanged" \
        in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert out.read_text() == "good\n"
    assert [p.name for p in champion_project.iterdir() if ".partial" in p.name] == []
