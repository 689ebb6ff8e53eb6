"""Stages depend on their code: a code edit reruns exactly the stages that can execute it and
what is downstream; unchanged code skips everything. Stage order from DVC's graph; one
in-process up-to-date check; `textloop run` quiet by default; stage cmds need no venv on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.e2e_project import REPO, isolate_env, make_project, sample_csv
from textloop.pipeline.code_deps import own_modules, stage_fingerprint, stage_modules
from textloop.pipeline.dag import CHECKED, RAN, RESTORED, SKIPPED, pipeline_order, stage_names, walk

STAGES = ["sources", "ingest", "clean", "label", "shard", "train", "optimize", "evaluate"]
DVC_HINTS = ("To track the changes with git", "core.autostage", "dvc push", "UserWarning")


def test_stage_modules_follow_the_imports_of_each_stage():
    """Each stage's own tasks module, what it imports (lazy imports too), never another's."""
    clean, label, train = (stage_modules(s) for s in ("clean", "label", "train"))
    assert {"tasks.clean", "textloop.core.text", "textloop.pipeline.stages"} <= clean
    assert "tasks.label" not in clean and "tasks.train" not in clean
    assert "tasks.ingest" not in label and "tasks.label" in label
    # label-error detection, weak and pseudo labels: label runs them, and shard's split rule
    assert {"tasks.label.label_issues", "tasks.label.weak", "tasks.label.pseudo",
            "tasks.shard"} <= label
    # train reads the shards through their contract and redacts as clean does; never shard's steps
    assert {"tasks.train.fit", "tasks.train.baseline", "tasks.train.transformer.trainer",
            "textloop.core.splits", "tasks.clean.redact"} <= train
    assert not {"tasks.shard", "tasks.shard.shard_parts", "tasks.clean.clean_parts"} & train
    assert "textloop.pipeline.models" in stage_modules("evaluate")
    assert "textloop.pipeline.dag" not in clean  # the name check of `textloop stage` is not code
    # the stage code never pulls in orchestration or serving
    assert not [m for m in train if m.startswith(("flows", "textloop.serve", "textloop.loop"))]


def test_fingerprint_changes_for_exactly_the_stages_that_run_the_edit(tmp_path):
    modules = own_modules()
    before = {s: stage_fingerprint(s, modules) for s in STAGES[1:]}
    edited = tmp_path / "shard.py"
    edited.write_text(modules["tasks.shard"].read_text() + "\n# an edit\n")
    after = {s: stage_fingerprint(s, {**modules, "tasks.shard": edited}) for s in STAGES[1:]}
    changed = [s for s in STAGES[1:] if before[s] != after[s]]
    # label asks shard's split rule which rows are train; train.. read the shards through their
    # contract (textloop.core.splits), so only the shards shard writes can rerun them
    assert changed == ["label", "shard"]
    assert before["clean"]["textloop"] and "tasks.clean" in before["clean"]["modules"]


def test_editing_the_transformer_training_code_reruns_train_not_label(tmp_path):
    """label scores with a saved model (pseudo-labels: maybe a transformer), so it runs the
    transformer's inference code, never its trainer or its fine-tuning on the Trainer."""
    modules = own_modules()
    label = stage_modules("label", modules)
    assert "tasks.train.transformer.torch_classifier" in label
    assert not {"tasks.train.fit", "tasks.train.transformer.trainer",
                "tasks.train.transformer.fine_tune"} & label
    for edited_module in ("tasks.train.transformer.fine_tune",
                          "tasks.train.transformer.trainer"):
        edited = tmp_path / f"{edited_module}.py"
        edited.write_text(modules[edited_module].read_text() + "\n# an edit\n")
        after = {**modules, edited_module: edited}
        assert stage_fingerprint("label", after) == stage_fingerprint("label", modules)
        assert stage_fingerprint("train", after) != stage_fingerprint("train", modules)


def test_stage_list_and_order_come_from_dvc_yaml(tmp_path):
    root = make_project(tmp_path / "p", "data.csv")
    assert stage_names(root) == STAGES
    assert pipeline_order(root) == STAGES
    # reordering the file does not change the DAG order
    text = (root / "dvc.yaml").read_text()
    head, _, body = text.partition("stages:\n")
    blocks = body.split("\n  evaluate:\n")
    (root / "dvc.yaml").write_text(f"{head}stages:\n  evaluate:\n{blocks[1]}\n{blocks[0]}\n")
    assert stage_names(root)[0] == "evaluate"
    assert pipeline_order(root) == STAGES


def _copy_code(dest: Path) -> Path:
    """A private copy of textloop + tasks; stage subprocesses import it (PYTHONPATH)."""
    for pkg in ("textloop", "tasks"):
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _dvc_without_venv(root: Path, env: dict[str, str]):
    """`dvc repro --single-item NAME` as a user would run it, no venv on PATH."""
    def run(name: str, verdict: str) -> str:
        if verdict != SKIPPED:
            proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", name],
                                  cwd=root, env=env, capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return verdict
    return run


def _states(root: Path, env: dict[str, str]) -> dict[str, str]:
    return {name: state for name, state, _ in walk(root, _dvc_without_venv(root, env))}


@pytest.mark.e2e
def test_code_edits_rerun_their_stages_and_downstream(tmp_path, monkeypatch, capfd):
    from prefect.testing.utilities import prefect_test_harness
    from typer.testing import CliRunner

    from textloop.cli import app

    root = make_project(tmp_path / "proj", "sample.csv")
    sample_csv(root / "sample.csv", 300)
    code = _copy_code(tmp_path / "code")
    monkeypatch.setenv("PYTHONPATH", str(code))
    isolate_env(monkeypatch, root)
    for key in ("TEXTLOOP_VERBOSE", "MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # the CLI sets them; undone after

    with prefect_test_harness(server_startup_timeout=120):
        result = CliRunner().invoke(app, ["run", "--label-col", "sentiment"])
    captured = capfd.readouterr()
    shown = result.output + captured.out + captured.err
    assert result.exit_code == 0, shown[-4000:]
    for hint in DVC_HINTS:
        assert hint not in shown
    assert "clean      ran" in shown and "sources    checked" in shown
    assert json.loads((root / "data/00_code/clean.json").read_text())["modules"]["tasks.clean"]

    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no venv: scripts/stage.sh finds it
    assert _states(root, env) == {"sources": CHECKED, **{s: SKIPPED for s in STAGES[1:]}}
    _a_rerun_with_nothing_changed_needs_neither_prefect_nor_mlflow(root)

    label = code / "tasks/label/__init__.py"  # an edit that changes label's output
    label.write_text(label.read_text() + (
        "\n\n_split_trusted = split_trusted\n\n\ndef split_trusted(df, cfg):\n"
        "    trusted, queue, report = _split_trusted(df, cfg)\n"
        "    return trusted.iloc[::-1].reset_index(drop=True), queue, report\n"))  # rows kept
    states = _states(root, env)
    # ingest spells labels with textloop.core.label_values, not the label stage's steps: it and
    # clean are skipped; label and everything downstream rerun
    assert [s for s in STAGES[1:] if states[s] == SKIPPED] == ["ingest", "clean"]
    assert [s for s in STAGES[1:] if states[s] == RAN] == STAGES[3:]

    evaluate = code / "tasks/evaluate/metrics.py"  # run by evaluate, and by optimize (gate_metric
    evaluate.write_text(evaluate.read_text() + "\n# reviewed\n")  # auto); label only scores
    states = _states(root, env)
    assert [s for s in STAGES[1:] if states[s] == RAN] == ["optimize", "evaluate"]
    assert _states(root, env) == {"sources": CHECKED, **{s: SKIPPED for s in STAGES[1:]}}

    predictions = root / "data/06_eval/predictions.parquet"  # a lost output, still cached
    predictions.unlink()
    states = _states(root, env)
    assert [s for s in STAGES[1:] if states[s] != SKIPPED] == ["evaluate"]
    # every output of evaluate is cached, or is a metric/plot DVC copies into its run cache
    assert states["evaluate"] == RESTORED and predictions.is_file()


def _a_rerun_with_nothing_changed_needs_neither_prefect_nor_mlflow(root: Path) -> None:
    """The sources check and DVC's status say nothing changed: the run is recorded and says
    so in one line, without importing Prefect or MLflow (no server is up here: not in Prefect)."""
    before = json.loads((root / ".textloop/last_run.json").read_text())
    env = {**os.environ, "PYTHONPATH": f"{os.environ['PYTHONPATH']}{os.pathsep}{REPO}"}  # flows/
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "textloop", "run", "--json"],
                          cwd=root, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    said = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert {"dvc", "textloop"} <= imported, said
    assert not {"prefect", "mlflow", "torch"} & imported, said
    record = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert record["stages_run"] == [] and record["stages_skipped"] == STAGES[1:]
    assert record["nothing_changed"] and record["mlflow_run_id"] is None
    assert record["deploy"]["registered"] is False and record["deploy"]["outcome"] == "unchanged"
    assert record["deploy"]["version"] == before["deploy"]["version"] == "1"
    assert record["prefect"].startswith("not recorded")
    assert record["flow_run_id"] == "none"
    assert "nothing changed: every stage is up to date (DVC) with the outputs of the last run" \
        in proc.stderr
    assert json.loads((root / ".textloop/last_run.json").read_text())["nothing_changed"]


def test_a_failing_stage_keeps_quiet_and_reports_its_last_lines(tmp_path, monkeypatch, capfd):
    from flows.lifecycle import StageFailed, repro_stage

    root = make_project(tmp_path / "p", "missing.csv")
    isolate_env(monkeypatch, root)
    monkeypatch.chdir(tmp_path)  # the stage runs in its project wherever the caller is
    (root / "data/07_feedback").mkdir(parents=True, exist_ok=True)
    with pytest.raises(StageFailed, match="stage sources failed: .*sources, exited with 2"):
        repro_stage(str(root), "sources", CHECKED)  # DVC in this process; textloop's UserError
    assert "error: missing.csv: data source not found" in capfd.readouterr().err
    with pytest.raises(StageFailed, match="stage ingest failed") as failed:
        repro_stage(str(root), "ingest", RAN)  # DVC in this process, output kept
    assert "ingest" in failed.value.tail[-1]
    assert "ingest" not in capfd.readouterr().err  # nothing streamed: the CLI prints the tail
