"""The champion a project serves, looked up and loaded: which registered model (served_model),
its champion version and tags (champion_info), the classifier itself (load_champion). What a
stage needs to score with the champion, apart from the registry's writes and the gate
(textloop.pipeline.registry), so a stage that only scores does not run deploy's code."""

from __future__ import annotations

import json
from typing import Any

from textloop.core.config import model_name, owner_file
from textloop.core.layout import Project
from textloop.core.model import CHAMPION_ALIAS
from textloop.pipeline import tracking
from textloop.pipeline.tracking import filter_literal


def mlflow_client() -> Any:
    """An MlflowClient on the current tracking/registry URI."""
    from mlflow import MlflowClient

    return MlflowClient()


def current_champion(client: Any, name: str, alias: str = CHAMPION_ALIAS) -> Any | None:
    """The version holding the alias (champion by default); None when the model or the alias
    does not exist yet. Registry errors propagate (never read as 'no champion')."""
    models = client.search_registered_models(f"name={filter_literal(name)}")
    holder = next((m.aliases.get(alias) for m in models if m.name == name), None)
    return None if holder is None else client.get_model_version(name, str(holder))


def served_model(project: Project) -> tuple[str, str]:
    """The registered model status, predict and serve use, and why that one.

    deploy.model_name when set; else the name derived from ingest.source when it has a champion;
    else the model the last completed run deployed to (a failed `--data` run on a new source does
    not hide the champion still being served: metrics/deploy.json names the model the last
    deploying run used); else the derived name (no champion yet)."""
    params = project.params()
    derived = model_name(params)
    if params.deploy.model_name:
        return derived, f"deploy.model_name in {owner_file('deploy.model_name')}"
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
        "uri": f"models:/{name}@{CHAMPION_ALIAS}", "source": version.source,
        "metrics": {"accuracy": float(tags.get("test_accuracy", "nan")),
                    "f1_macro": float(tags.get("test_f1_macro", "nan"))},
        "gate": {k.removeprefix("gate."): v for k, v in tags.items() if k.startswith("gate.")},
        "data_hash": tags.get("data_hash"), "model_hash": tags.get("model_hash"),
        "labels": json.loads(tags.get("labels", "[]")), "train_model": tags.get("train_model"),
        "gate_metric": tags.get("gate_metric"), "created_at": version.creation_timestamp,
    }


def load_champion(project: Project) -> tuple[Any, dict[str, Any]]:
    """The champion as an in-memory classifier (predict_frame) plus its registry info."""
    from textloop.core.errors import UserError
    from textloop.pipeline.pyfunc import load_registered

    info = champion_info(project)
    if info is None:
        name, why = served_model(project)
        raise UserError(f"no champion model yet: {name} ({why}) has none; run `textloop run`")
    return load_registered(info["uri"]), info
