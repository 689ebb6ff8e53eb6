"""The first hour as a user lives it, through the real clients and the real command line (output
piped, not a terminal): a run prints one line per stage and per optimize trial and none of the
libraries' noise; predict and explain print only their answers; MLflow shows the textloop
experiment as training runs whose names say what ran; `status` names the last Prefect flow run;
`lineage` prints whole source lines; the summary says how to commit the baseline, and after that
command `dvc exp show` has one."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.e2e_project import REPO, make_project, sample_csv
from textloop.pipeline.git_baseline import uncommitted

# what a default run, predict or explain must never print
NOISE = ("Successfully registered model", "Created version", "Add type hints", "UserWarning",
         "Downloading artifacts", "it/s]", "\x1b[",
         "INFO textloop.pipeline.registry", "INFO tasks.optimize.tune")
STAGES = ("ingest", "clean", "label", "shard", "train", "optimize", "evaluate")


def textloop(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m textloop ARGS` in the project, output piped (what a CI log or a file sees)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES": "0",
           "COLUMNS": "120"}
    proc = subprocess.run([sys.executable, "-m", "textloop", *args], cwd=root, env=env,
                          capture_output=True, text=True, check=False, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _quiet(proc: subprocess.CompletedProcess[str]) -> str:
    """Both streams, after checking that none of the noise reached them."""
    shown = proc.stdout + proc.stderr
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} in:\n{shown[-3000:]}"
    return shown


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A fresh `textloop init` project on 300 tweets, after its first `textloop run`."""
    root = make_project(tmp_path_factory.mktemp("firsthour") / "proj", "sample.csv",
                        **{"ingest.label_col": "sentiment"})
    sample_csv(root / "sample.csv", 300)
    return root, textloop(root, "run")


def test_a_piped_run_prints_each_stage_and_each_trial_and_no_noise(first_run):
    _, proc = first_run
    lines = _quiet(proc).splitlines()
    for stage in STAGES:
        assert [ln for ln in lines if re.fullmatch(rf"{stage}\s+ran\s+[\d.]+ s", ln)], stage
    trials = [ln for ln in lines if re.match(r"optimize\s+trial \d+/2\b", ln)]
    assert len(trials) >= 2, "\n".join(lines)
    assert any(re.match(r"train\s+fitting ", ln) for ln in lines)
    assert any(re.match(r"evaluate\s+scoring \d+ test rows", ln) for ln in lines)


def test_the_summary_says_how_to_commit_the_baseline_and_that_command_gives_dvc_one(first_run):
    root, proc = first_run
    found = re.search(r"^ +(git add .+ && git commit -m .+)$", proc.stdout, re.MULTILINE)
    assert found, proc.stdout
    subprocess.run(found.group(1), shell=True, cwd=root, check=True, capture_output=True)
    assert uncommitted(root) == []
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--csv", "--no-pager"],
                           cwd=root, capture_output=True, text=True, check=True).stdout
    header, *rows = csv.reader(io.StringIO(shown))
    rev = header.index("rev")  # DVC names a metric by its file only when several files have one
    accuracy = next(i for i, name in enumerate(header)
                    if name in ("accuracy", "metrics/metrics.json:accuracy"))
    baseline = next(r for r in rows if r[rev] not in ("", "workspace"))  # the commit's row
    assert re.fullmatch(r"0\.\d+", baseline[accuracy]), shown[:2000]
    assert "git add" not in textloop(root, "run").stdout  # committed: nothing more to say


def test_mlflow_shows_training_runs_named_for_what_ran(first_run):
    import mlflow

    from textloop.core.layout import Project

    root, _ = first_run
    client = mlflow.MlflowClient(Project(root).tracking_uri)
    exp = client.get_experiment_by_name("textloop")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    names = {r.info.run_name for r in runs}
    parent = min((r for r in runs if r.data.tags.get("textloop.flow") == "lifecycle"),
                 key=lambda r: r.info.start_time)  # the first run (later tests run again)
    assert re.fullmatch(r"lifecycle sample@[0-9a-f]{8} v1 promoted", parent.info.run_name), names
    for stage in STAGES:
        assert f"{stage} sample" in names, names
    assert {"optimize trial 0 sample", "optimize trial 1 sample"} <= names, names


def test_an_experiment_made_before_is_typed_as_training_runs_too(tmp_path, monkeypatch):
    import mlflow

    from tests.support.e2e_project import isolate_env
    from textloop.core.layout import Project
    from textloop.pipeline import tracking

    root = make_project(tmp_path / "p", "data.csv")
    isolate_env(monkeypatch, root)
    project = Project(root)
    client = mlflow.MlflowClient(project.tracking_uri)
    old = client.create_experiment("textloop", artifact_location=project.experiment_artifacts())
    assert tracking.KIND_TAG not in client.get_experiment(old).tags
    assert tracking.setup(project) == old
    assert client.get_experiment(old).tags[tracking.KIND_TAG] == "custom_model_development"


def test_status_names_the_last_prefect_flow_run(first_run):
    root, _ = first_run
    record = json.loads((root / ".textloop/last_run.json").read_text())
    shown = textloop(root, "status").stdout
    if record["flow_run_id"] == "none":  # a rerun with nothing changed and no server to record
        ran = record["since_flow_run"]  # it: status names the flow run it stands on
        assert f"nothing changed since Prefect flow run {ran['name']} ({ran['id']})" in shown
    else:
        ran = {"name": record["flow_run_name"], "id": record["flow_run_id"]}
    assert re.fullmatch(r"[0-9a-f-]{36}", ran["id"]), record
    assert ran["name"] == f"lifecycle sample {ran['id'][:8]}", ran  # what ran, not random words
    assert f"Prefect flow run {ran['name']} ({ran['id']})" in shown


def test_lineage_prints_every_source_field_whole(first_run):
    root, _ = first_run
    sources = json.loads((root / "data/00_sources.json").read_text())["data"]
    lines = textloop(root, "lineage").stdout.splitlines()
    source = [ln for ln in lines if ln.strip().startswith("source data")]
    assert len(source) == 1 and "{" not in source[0], lines
    for value in (sources["digest"], sources["path"], sources["source"]):
        assert value in source[0]


def test_predict_and_explain_print_only_their_answers(first_run):
    root, _ = first_run
    (root / "in.csv").write_text("text\nwhat a lovely day\nthis is awful\n")
    proc = textloop(root, "predict", "in.csv", "-o", "out.csv")
    assert "wrote 2 rows to out.csv" in _quiet(proc)
    assert "textloop-sample v1" in _quiet(textloop(root, "explain", "what a lovely day"))


def test_a_plain_mlflow_client_loads_and_predicts_without_warnings(first_run):
    """The registered model through MLflow alone, in a fresh process: no advice printed."""
    from textloop.core.layout import Project

    root, _ = first_run
    code = (f"import mlflow, pandas as pd; mlflow.set_tracking_uri({Project(root).tracking_uri!r}); "
            "m = mlflow.pyfunc.load_model('models:/textloop-sample/1'); "
            "print(m.predict(pd.DataFrame({'text': ['a lovely day']}))['label'].tolist())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # a fresh shell
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "type hints" not in proc.stderr and "UserWarning" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("['")


def test_dvc_exp_run_prints_each_trial_once_and_no_noise(first_run):
    """A stage DVC starts is as quiet as under `textloop run`: a trial is one step line (not
    also the optimize task's own INFO line), the registry's alias lines stay out."""
    root, _ = first_run
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES": "0"}
    env.pop("TEXTLOOP_VERBOSE", None)
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.tfidf.C=8"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = _quiet(proc).splitlines()
    trials = [ln for ln in lines if re.search(r"\btrial \d+\b", ln)]
    numbers = {m.group(1) for ln in trials if (m := re.search(r"\(#(\d+)\)", ln))}
    assert trials and len(numbers) == len(trials), "\n".join(trials)


def test_a_run_started_inside_the_projects_data_folder_runs_its_stages(first_run):
    """`textloop run` from a folder of the project that git ignores (data/): the run works from
    the project's root, as its stages do (DVC refused the project's dvc.yaml as git-ignored)."""
    root, _ = first_run
    assert "/*" in (root / "data" / ".gitignore").read_text().split()
    proc = textloop(root / "data", "run", "--set", "train.tfidf.C=5", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^train\s+ran\b", proc.stdout + proc.stderr, re.MULTILINE)
