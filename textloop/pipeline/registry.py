"""Every MLflow Model Registry call: look up versions and the champion, log + register a model
with the rows it trained on, fetch a version to score it, record a gate decision, move the alias.
Names reach MLflow only through textloop.pipeline.tracking (filter_literal, mlflow_value)."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.deploy import ALIAS, GateDecision, model_name
from textloop.core.layout import Project
from textloop.pipeline import tracking
from textloop.pipeline.tracking import filter_literal, mlflow_value

log = logging.getLogger(__name__)

TRAIN_ROWS_FILE = "train_rows.npy"  # model artifact: sorted uint64 hashes of the training texts
MAX_REGISTRY_TAG = 100_000  # MLflow's limit on model-version tag values
def mlflow_client() -> Any:
    """An MlflowClient on the current tracking/registry URI."""
    from mlflow import MlflowClient

    return MlflowClient()


def current_champion(client: Any, name: str, alias: str = ALIAS) -> Any | None:
    """The version holding the alias (champion by default); None when the model or the alias
    does not exist yet. Registry errors propagate (never read as 'no champion')."""
    models = client.search_registered_models(f"name={filter_literal(name)}")
    holder = next((m.aliases.get(alias) for m in models if m.name == name), None)
    return None if holder is None else client.get_model_version(name, str(holder))


def version_with_hash(client: Any, name: str, model_hash: str) -> Any | None:
    """A registered version built from exactly this model folder, if any (errors propagate: a
    failed lookup must not turn the 'model unchanged' check off)."""
    found = client.search_model_versions(
        f"name={filter_literal(name)} and tags.model_hash={filter_literal(model_hash)}")
    return next((v for v in found if v.name == name), None)


def labels_of(version: Any) -> list[str]:
    """The label set a registered version was trained on (a version tag)."""
    return sorted(json.loads(version.tags.get("labels", "[]")))


def register(name: str, model_dir: Path, meta: dict, train_rows: np.ndarray, run_id: str,
             params: dict, tags: dict[str, str]) -> Any:
    """Log the model folder as one pyfunc (with train_rows.npy beside it) under the run and
    register it as a new version of `name`; returns the ModelVersion."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # type-hint/cloudpickle advice, not errors
        from textloop.pipeline.pyfunc import log_pyfunc  # its class body triggers the advice

        rows = Path(tmp) / TRAIN_ROWS_FILE
        np.save(rows, np.asarray(train_rows, dtype=np.uint64))
        info = log_pyfunc(model_dir, meta, {"labels": meta["classes"], "params": params},
                          extra_artifacts={"train_rows": str(rows)})
    safe = {k: mlflow_value(v, MAX_REGISTRY_TAG) for k, v in tags.items()}
    return mlflow.register_model(info.model_uri, name, tags=safe)


@contextlib.contextmanager
def downloaded(name: str, version: str) -> Iterator[Path]:
    """A registered version's pyfunc folder, copied to a temporary folder for this block."""
    import mlflow.artifacts

    uri = mlflow_client().get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))


def trained_rows(local: Path) -> np.ndarray | None:
    """The training-row hashes stored with a downloaded version (None: registered before rows
    were recorded)."""
    path = local / "artifacts" / TRAIN_ROWS_FILE
    return np.load(path) if path.is_file() else None


def predict_labels(local: Path, texts: Sequence[str]) -> list[str]:
    """Predicted labels of a downloaded pyfunc version for raw texts."""
    import mlflow.pyfunc
    import pandas as pd

    if not len(texts):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"text": list(texts)}))
    return out["label"].astype(str).tolist()


def record(name: str, version: str, decision: GateDecision, run_id: str) -> None:
    """The decision as tags on the version and the run; the alias moves only when promoted."""
    client = mlflow_client()
    tags = {"gate.outcome": decision.outcome, "gate.promoted": str(decision.promote).lower(),
            "gate.reason": decision.reason, "gate.metric": decision.metric,
            "gate.candidate_score": _fmt(decision.candidate_score),
            "gate.champion_score": _fmt(decision.champion_score),
            "gate.champion_version": decision.champion_version or "",
            "gate.n_compared": str(decision.n_compared), "gate.n_excluded": str(decision.n_excluded),
            "gate.alias": decision.alias}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, mlflow_value(value, MAX_REGISTRY_TAG))
        client.set_tag(run_id, key, mlflow_value(value))
    if decision.promote:  # champion, or challenger in deploy.mode shadow
        client.set_registered_model_alias(name, decision.alias, version)
        log.info("deploy: %s version %s is now %s", name, version, decision.alias)


def _fmt(score: float | None) -> str:
    return "" if score is None else f"{score:.6f}"


def served_model(project: Project) -> tuple[str, str]:
    """The registered model status, predict and serve use, and why that one.

    deploy.model_name when set; else the name derived from ingest.source when it has a champion;
    else the model the last completed run deployed to (a failed `--data` run on a new source does
    not hide the champion still being served: metrics/deploy.json names the model the last
    deploying run used); else the derived name (no champion yet)."""
    params = project.params()
    derived = model_name(params)
    if params.deploy.model_name:
        return derived, "deploy.model_name in params.yaml"
    tracking.setup(project)
    client = mlflow_client()
    if current_champion(client, derived) is not None:
        return derived, f"derived from ingest.source {params.ingest.source!r}"
    decision = project.path(params.paths.deploy_decision)  # written only by a run that deployed
    last = (json.loads(decision.read_text(encoding="utf-8")).get("model_name")
            if decision.is_file() else None)
    if last and last != derived and current_champion(client, last):
        return last, (f"the last run that deployed used it; ingest.source "
                      f"{params.ingest.source!r} ({derived}) has no champion yet")
    return derived, f"derived from ingest.source {params.ingest.source!r}"


def champion_info(project: Project,
                  served: tuple[str, str] | None = None) -> dict[str, Any] | None:
    """The champion of the model this project serves (`served`: served_model's answer when the
    caller has it already), with its test metrics and why that model; None when it has none."""
    tracking.setup(project)
    name, why = served or served_model(project)
    version = current_champion(mlflow_client(), name)
    if version is None:
        return None
    tags = version.tags
    return {
        "model_name": name, "why": why, "version": str(version.version), "run_id": version.run_id,
        "uri": f"models:/{name}@{ALIAS}", "source": version.source,
        "metrics": {"accuracy": float(tags.get("test_accuracy", "nan")),
                    "f1_macro": float(tags.get("test_f1_macro", "nan"))},
        "gate": {k.removeprefix("gate."): v for k, v in tags.items() if k.startswith("gate.")},
        "data_hash": tags.get("data_hash"), "model_hash": tags.get("model_hash"),
        "labels": json.loads(tags.get("labels", "[]")), "train_model": tags.get("train_model"),
        "gate_metric": tags.get("gate_metric"), "created_at": version.creation_timestamp,
    }


def load_champion(project: Project) -> tuple[Any, dict[str, Any]]:
    """The champion as an in-memory classifier (predict_frame) plus its registry info."""
    import mlflow.pyfunc

    from textloop.core.errors import UserError

    info = champion_info(project)
    if info is None:
        name, why = served_model(project)
        raise UserError(f"no champion model yet: {name} ({why}) has none; run `textloop run`")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pyfunc = mlflow.pyfunc.load_model(info["uri"])
    return pyfunc.unwrap_python_model().model, info


def resolve_challenger(name: str, challenger_alias: str, version: str, promote: bool,
                       reason: str) -> None:
    """End a shadow trial: promoted moves the champion alias to the challenger's version;
    either way the challenger alias is removed and the outcome is tagged on the version
    (`shadow.outcome`, `shadow.reason`)."""
    client = mlflow_client()
    outcome = "promoted" if promote else "retired"
    client.set_model_version_tag(name, version, "shadow.outcome", outcome)
    client.set_model_version_tag(name, version, "shadow.reason",
                                 mlflow_value(reason, MAX_REGISTRY_TAG))
    if promote:
        client.set_registered_model_alias(name, ALIAS, version)
    client.delete_registered_model_alias(name, challenger_alias)
    log.info("shadow: %s version %s %s (%s)", name, version, outcome, reason)
