"""CLI contract: user mistakes are one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.e2e_project import isolate_env, make_project
from textloop.cli import app, parse_sets
from textloop.core.errors import UserError

runner = CliRunner()


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", "data.csv")
    (root / "data.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    isolate_env(monkeypatch, root)
    return root


def _fails_cleanly(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert message in result.output


def test_missing_input_file(project):
    _fails_cleanly(["predict", "nope.csv"], "nope.csv: file not found")


def test_missing_text_column(project):
    (project / "in.csv").write_text("body\nhello\n")
    _fails_cleanly(["predict", "in.csv"], "in.csv, column 'text': text column not found")


def test_predict_without_champion(project):
    (project / "in.csv").write_text("text\nhello\n")
    _fails_cleanly(["predict", "in.csv"], "no champion model yet")


def test_unknown_stage_and_bad_set(project):
    _fails_cleanly(["stage", "nope"], "unknown stage 'nope'")
    _fails_cleanly(["run", "--set", "train.tfidf.C"], "expected KEY=VALUE")
    _fails_cleanly(["run", "--set", "train.tfidf.C=-1"], "train.tfidf.C: Input should be greater than 0")


def test_feedback_add_unknown_label_and_encoding(project):
    (project / "metrics").mkdir()
    (project / "metrics/label.json").write_text('{"labels": {"neg": 1, "pos": 1}}')
    (project / "fb.csv").write_text("text,label\nfine,pos\nhmm,maybe\n")
    _fails_cleanly(["feedback", "add", "fb.csv"], "fb.csv, row 2, column 'label': unknown label 'maybe'")


def test_not_a_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEXTLOOP_PROJECT", raising=False)
    _fails_cleanly(["status"], "not inside a textloop project")


def test_parse_sets_yaml_values():
    assert parse_sets(["a.b=2", "c=true", "d=null", "e=[1, 2]", "f=x=y"]) == {
        "a.b": 2, "c": True, "d": None, "e": [1, 2], "f": "x=y"}
    with pytest.raises(UserError):
        parse_sets(["=3"])


def test_label_import_merges_filled_rows_only(project):
    import json

    from tasks.feedback import read_store

    (project / "queue.csv").write_text("row_id,text,label,reason\nr1,so good,pos,no_label\n"
                                       "r2,unsure,,low_confidence\n")
    result = runner.invoke(app, ["label", "import", "queue.csv"])
    assert result.exit_code == 0, result.output
    out = json.loads(next(ln for ln in result.output.splitlines() if ln.startswith("{")))
    assert out["rows"] == 1 and out["rows_left_unlabeled"] == 1 and out["source"] == "labeling"
    store = read_store(project / "data/07_feedback")
    assert store[["text", "label", "source"]].values.tolist() == [["so good", "pos", "labeling"]]
