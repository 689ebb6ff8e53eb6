"""MLflow Model Registry wiring for deploy: log the pyfunc, register, gate, move the alias."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import yaml

from tasks.deploy import ALIAS, GateDecision, gate, labels_of, model_name, score_champion
from textloop.core.layout import Project
from textloop.pipeline import tracking
from textloop.pipeline.tracking import read_json, write_json

log = logging.getLogger(__name__)


def dvc_hashes(root: Path) -> dict[str, str]:
    """Output path -> md5 from dvc.lock: the data and model versions of this workspace."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    return {o["path"]: o.get("md5", "") for s in stages.values() for o in s.get("outs", [])}


def current_champion(client: Any, name: str, alias: str = ALIAS) -> Any | None:
    """The version holding the alias (champion by default), if any."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_with_hash(client: Any, name: str, model_hash: str) -> Any | None:
    """A registered version built from exactly this model folder, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.tags.get("model_hash") == model_hash), None)


def _version_tags(p: Any, meta: dict, metrics: dict, model_hash: str, hashes: dict,
                  extra: dict[str, str]) -> dict[str, str]:
    """What a registered version carries: lineage, label set and its test metrics."""
    return {
        "model_hash": model_hash, "data_hash": hashes.get(p.paths.shards, ""),
        "raw_data_hash": hashes.get(p.paths.raw, ""), "labels": json.dumps(sorted(meta["classes"])),
        "model_kind": meta["kind"], "train_model": p.train.model,
        "gate_metric": p.evaluate.gate_metric,
        "test_accuracy": f"{metrics['accuracy']:.6f}", "test_f1_macro": f"{metrics['f1_macro']:.6f}",
        "data_source": p.ingest.source, **extra,
    }


def _judge(client: Any, name: str, candidate: Any, metrics: dict, p: Any,
           test: Any) -> GateDecision:
    """Score the champion on the same test rows (if comparable) and apply the gate rule."""
    metric = p.evaluate.gate_metric
    champ = current_champion(client, name)
    if champ is None:
        decision = gate(metrics[metric], None, True, p.deploy, metric)
    else:
        test_labels = set(test["label"].astype(str))
        same = set(labels_of(champ)) == set(labels_of(candidate)) and test_labels <= set(
            labels_of(champ))
        champ_score = score_champion(f"models:/{name}/{champ.version}", test, metric) if same else None
        decision = gate(metrics[metric], champ_score, same, p.deploy, metric)
        decision.champion_version = str(champ.version)
    decision.candidate_version, decision.n_test = str(candidate.version), len(test)
    return decision


def deploy(project: Project, run_id: str, extra_tags: dict[str, str]) -> dict[str, Any]:
    """Register the model if it changed, gate it against the champion, move the alias."""
    import mlflow
    from mlflow import MlflowClient

    from tasks.shard import read_split
    from textloop.core.model import read_meta

    p = project.params()
    name, hashes, client = model_name(p), dvc_hashes(project.root), MlflowClient()
    model_hash = hashes.get(p.paths.model, "")
    existing = version_with_hash(client, name, model_hash) if model_hash else None
    if existing is not None:
        return {"registered": False, "model_name": name, "version": str(existing.version),
                "reason": f"model unchanged (already version {existing.version})"}
    model_dir = project.path(p.paths.model)
    meta, metrics = read_meta(model_dir), read_json(project.path(p.paths.eval_metrics))
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # type-hint/cloudpickle advice, not errors
        from textloop.pipeline.pyfunc import log_pyfunc  # its class body triggers the advice

        info = log_pyfunc(model_dir, meta, {"labels": meta["classes"],
                                            "params": p.model_dump(mode="json")})
    tags = _version_tags(p, meta, metrics, model_hash, hashes, extra_tags)
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    test = read_split(project.path(p.paths.shards), "test")
    decision = _judge(client, name, version, metrics, p, test)
    _record(client, name, version, decision, run_id, project.path(p.paths.deploy_decision))
    return {"registered": True, "model_name": name, "version": str(version.version),
            "promoted": decision.promote, "reason": decision.reason, "decision": decision.to_dict()}


def _record(client: Any, name: str, version: Any, decision: GateDecision, run_id: str,
            path: Path) -> None:
    """Save the decision as JSON and as tags; move the alias only when the gate passed."""
    tags = {"gate.promoted": str(decision.promote).lower(), "gate.reason": decision.reason,
            "gate.metric": decision.metric, "gate.candidate_score": f"{decision.candidate_score:.6f}",
            "gate.champion_score": "" if decision.champion_score is None
            else f"{decision.champion_score:.6f}",
            "gate.champion_version": decision.champion_version or ""}
    for k, v in tags.items():
        client.set_model_version_tag(name, version.version, k, v)
        client.set_tag(run_id, k, v)
    write_json(path, {"model_name": name, **decision.to_dict()})
    if decision.promote:
        client.set_registered_model_alias(name, ALIAS, version.version)
        log.info("deploy: %s version %s is now %s", name, version.version, ALIAS)


def champion_info(project: Project) -> dict[str, Any] | None:
    """The champion version of this project's registered model, with its test metrics."""
    from mlflow import MlflowClient

    from tasks.deploy import model_name

    tracking.setup(project)
    name = model_name(project.params())
    version = current_champion(MlflowClient(), name)
    if version is None:
        return None
    tags = version.tags
    return {
        "model_name": name, "version": str(version.version), "run_id": version.run_id,
        "uri": f"models:/{name}@champion", "source": version.source,
        "metrics": {"accuracy": float(tags.get("test_accuracy", "nan")),
                    "f1_macro": float(tags.get("test_f1_macro", "nan"))},
        "gate": {k.removeprefix("gate."): v for k, v in tags.items() if k.startswith("gate.")},
        "data_hash": tags.get("data_hash"), "model_hash": tags.get("model_hash"),
        "labels": json.loads(tags.get("labels", "[]")), "train_model": tags.get("train_model"),
        "created_at": version.creation_timestamp,
    }


def load_champion(project: Project) -> tuple[Any, dict[str, Any]]:
    """The champion as an in-memory classifier (predict_frame) plus its registry info."""
    import mlflow.pyfunc

    from textloop.core.errors import UserError

    info = champion_info(project)
    if info is None:
        raise UserError("no champion model yet: run `textloop run` first")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pyfunc = mlflow.pyfunc.load_model(info["uri"])
    return pyfunc.unwrap_python_model().model, info
