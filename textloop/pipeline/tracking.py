"""MLflow wiring: the project's tracking store, stage runs nested under the flow's parent run."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textloop.core.layout import Project

EXPERIMENT = "textloop"
PARENT_ENV = "TEXTLOOP_PARENT_RUN_ID"


def setup(project: Project) -> str:
    """Use the project's SQLite store and artifact folder; return the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(project.tracking_uri)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    project.artifact_root.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(EXPERIMENT, artifact_location=project.artifact_root.as_uri())


@contextlib.contextmanager
def stage_run(project: Project, stage: str) -> Iterator[Any]:
    """A run for one stage: nested under the flow's run when the flow started us."""
    import mlflow

    exp_id = setup(project)
    parent = os.environ.get(PARENT_ENV) or None
    with mlflow.start_run(experiment_id=exp_id, run_name=f"stage:{stage}",
                          parent_run_id=parent, tags={"textloop.stage": stage}) as run:
        yield run


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config as dotted keys, the form MLflow params want."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def log_params(section: dict, prefix: str) -> None:
    """Log a config section (values truncated to MLflow's 6000-char limit)."""
    import mlflow

    flat = flatten(section, f"{prefix}.")
    mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})


def log_numeric(metrics: dict, prefix: str = "", step: int | None = None) -> None:
    """Log the numeric leaves of a metrics dict."""
    import mlflow

    flat = {f"{prefix}{k}": float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if flat:
        mlflow.log_metrics({k.replace(" ", "_"): v for k, v in flat.items()}, step=step)


def write_json(path: Path, obj: Any) -> None:
    """Write a JSON report (DVC metrics files are plain JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read a JSON report written by write_json."""
    return json.loads(path.read_text(encoding="utf-8"))
