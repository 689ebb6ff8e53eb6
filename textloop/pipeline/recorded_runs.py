"""The lifecycle flow's side of a stage's MLflow run recorded by the stage process
(tracking.RecordedRun writes it; here it is logged).

Inside `textloop run` every stage runs in a process of its own (DVC starts it), while the flow's
process already has MLflow imported and its tracking store open. A stage process there writes
what it would have logged (run name, parent, tags, params, metrics with their time and step,
artifacts, child runs, status, start and end time) as one record; the flow logs it as the same
MLflow run right after the stage ends, failed or not. The record is a JSON file written whole
(temporary file + rename) once the stage's run ends, so a stage killed mid-way leaves none, and
the flow claims it by renaming before it logs it, so it is logged once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textloop.core.layout import Project
from textloop.pipeline.tracking import FAILED, PARENT_ENV, RECORDS_ENV

log = logging.getLogger(__name__)


@contextlib.contextmanager
def flow_records(project: Project, parent_run_id: str) -> Iterator[Path]:
    """For the flow's stages: their runs nest under `parent_run_id` and are recorded into a
    folder of this run (tracking.recorded_runs_folder reads it from the environment the stage
    processes inherit); what a killed run left there is dropped (one run at a time holds the
    workspace); it goes when the stages are done."""
    root = project.layout.stage_runs
    shutil.rmtree(root, ignore_errors=True)
    folder = root / parent_run_id
    folder.mkdir(parents=True)
    saved = {k: os.environ.get(k) for k in (PARENT_ENV, RECORDS_ENV)}
    os.environ.update({PARENT_ENV: parent_run_id, RECORDS_ENV: str(folder)})
    try:
        yield folder
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


def log_recorded(project: Project, folder: Path, stage: str) -> str | None:
    """Log the run `stage` recorded in `folder` (if it recorded one) as the MLflow run the stage
    would have logged itself; return its id. The record is claimed (renamed) first, so it is
    logged once; a run that cannot be completed is ended FAILED and the error raised."""
    path = folder / f"{stage}.json"
    claimed = path.with_suffix(".logging")
    try:
        os.replace(path, claimed)
    except FileNotFoundError:
        return None
    import mlflow

    from textloop.pipeline.tracking import setup

    record = json.loads(claimed.read_text(encoding="utf-8"))
    exp_id = setup(project)
    files = folder / f"{stage}.files"
    run_id = _replay(mlflow.MlflowClient(), exp_id, record["run"], record["parent"],
                     _context_tags(record["main_file"]), files)
    shutil.rmtree(files, ignore_errors=True)
    claimed.unlink()
    return run_id


def _context_tags(main_file: str) -> dict[str, str]:
    """The system tags MLflow's start_run would have given a run in the stage process: its
    context providers, with the two that read the process's main file (source name, git
    commit/branch/URL) asked about the stage's; the rest (user, environment) are the same here,
    as the stage process inherited this one's environment."""
    from mlflow.tracking.context.default_context import DefaultRunContext
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH,
        MLFLOW_GIT_COMMIT,
        MLFLOW_GIT_REPO_URL,
        MLFLOW_SOURCE_NAME,
    )

    tags = {**DefaultRunContext().tags(), MLFLOW_SOURCE_NAME: main_file or "<console>"}
    if main_file:
        git = {MLFLOW_GIT_COMMIT: git_utils.get_git_commit(main_file),
               MLFLOW_GIT_BRANCH: git_utils.get_git_branch(main_file),
               MLFLOW_GIT_REPO_URL: git_utils.get_git_repo_url(main_file)}
        if git[MLFLOW_GIT_COMMIT] is not None:
            tags.update({k: v for k, v in git.items() if v is not None})
    tags.update(resolve_tags(ignore=[DefaultRunContext, GitRunContext]))
    return tags


def _replay(client: Any, exp_id: str, run: dict[str, Any], parent: str | None,
            context: dict[str, str], files: Path) -> str:
    """Create one recorded run (then its children) with its own times, tags, params, metrics
    and artifacts; the tags are those start_run sets (context, ours, parent, name)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    tags = {**context, **run["tags"], **({MLFLOW_PARENT_RUN_ID: parent} if parent else {}),
            MLFLOW_RUN_NAME: run["name"]}
    run_id = client.create_run(exp_id, start_time=run["start_time"], tags=tags,
                               run_name=run["name"]).info.run_id
    try:
        client.log_batch(run_id, metrics=[Metric(k, v, at, step) for k, v, at, step in run["metrics"]],
                         params=[Param(k, v) for k, v in run["params"].items()],
                         tags=[RunTag(k, v) for k, v in run["tags_set"].items()])
        artifacts = files / run["files"]
        if artifacts.is_dir():
            client.log_artifacts(run_id, str(artifacts))
        for child in run["children"]:
            _replay(client, exp_id, child, run_id, context, files)
    except BaseException:
        client.set_terminated(run_id, FAILED)
        raise
    client.set_terminated(run_id, run["status"] or FAILED, end_time=run["end_time"])
    return run_id
