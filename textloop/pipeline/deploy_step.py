"""The deploy step: resolve its inputs from the workspace once (resolve_inputs), then register the
model if it changed, gate it against the champion on the rows neither trained on, and record the
one GateDecision (MLflow tags, metrics/deploy.json, the run summary). MLflow calls: registry.py;
the rule: tasks/deploy.py."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.deploy import (
    ChampionView,
    Evidence,
    GateDecision,
    awaiting_approval,
    decide,
    not_comparable_why,
    row_hashes,
    unchanged,
    untrained_mask,
)
from textloop.core.config import Params, model_name
from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.pipeline import card, lineage, registry
from textloop.pipeline.dvc import dvc_hashes
from textloop.pipeline.history import Journal
from textloop.pipeline.tracking import write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployInputs:
    """Everything the deploy step decides from, already read: the model folder and its meta, its
    test metrics, the candidate's test split (row_id, text, label) with its predictions aligned,
    the hashes of the rows it trained on, the DVC hashes, the resolved gate metric."""

    name: str
    params: Params
    model_dir: Path
    meta: dict[str, Any]
    metrics: dict[str, Any]
    test: pd.DataFrame
    predicted: list[str]
    train_rows: np.ndarray
    model_hash: str
    hashes: dict[str, str]
    metric: str
    decision_path: Path
    slices: dict[str, np.ndarray] | None = None  # slice value per test row (tasks.evaluate.slices)


def folder_digest(folder: Path) -> str:
    """md5 over a folder's relative paths and bytes: the model hash when dvc.lock has none."""
    md5 = hashlib.md5(usedforsecurity=False)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        md5.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return md5.hexdigest()


def resolve_inputs(project: Project) -> DeployInputs:
    """Read what deploy needs from the paths in params.yaml.

    Raises UserError when the predictions do not cover the test split (evaluate is stale)."""
    from tasks.evaluate.metrics import gate_metric
    from textloop.core.model import read_meta
    from textloop.core.splits import read_split
    from textloop.pipeline.tracking import read_json

    p = project.params()
    shards, hashes = project.path(p.paths.shards), dvc_hashes(project.root)
    test, train = read_split(shards, "test"), read_split(shards, "train")
    preds = pd.read_parquet(project.path(p.paths.eval_predictions), columns=["row_id", "predicted"])
    joined = test[["row_id"]].merge(preds, on="row_id", how="left", validate="one_to_one")
    if joined["predicted"].isna().any():
        raise UserError(f"{project.path(p.paths.eval_predictions)}: no prediction for "
                        f"{int(joined['predicted'].isna().sum())} test rows; run the evaluate stage")
    model_dir = project.path(p.paths.model)
    return DeployInputs(
        name=model_name(p), params=p, model_dir=model_dir, meta=read_meta(model_dir),
        metrics=read_json(project.path(p.paths.eval_report)),
        test=test[["row_id", "text", "label"]].astype({"label": str}),
        predicted=joined["predicted"].astype(str).tolist(), train_rows=row_hashes(train["text"]),
        model_hash=hashes.get(p.paths.model) or folder_digest(model_dir), hashes=hashes,
        metric=gate_metric(p.evaluate.gate_metric, train["label"].astype(str).tolist(),
                           p.shard.min_class_share),
        decision_path=project.path(p.paths.deploy_decision), slices=_slices(test, p))


def _slices(test: pd.DataFrame, p: Params) -> dict[str, np.ndarray]:
    """The candidate test rows' slice values, by the one rule evaluate reports them with."""
    from tasks.evaluate.slices import slice_keys

    return slice_keys(test, p.evaluate.slices)[0]


def evidence(inputs: DeployInputs) -> Evidence:
    """The gate's evidence settings and inputs: bootstrap size and seed, slices, and the
    candidate's behavioural pass rate from evaluate's metrics (None: the suite did not run)."""
    e = inputs.params.evaluate
    behaviour = inputs.metrics.get("behaviour") or {}
    return Evidence(samples=e.bootstrap_samples, seed=e.bootstrap_seed, slices=inputs.slices,
                    slice_min_rows=e.slices.min_rows,
                    behaviour_pass_rate=behaviour.get("pass_rate"))


def version_tags(inputs: DeployInputs, extra: dict[str, str]) -> dict[str, str]:
    """What a registered version carries: lineage, label set, gate metric and test metrics."""
    p, m = inputs.params, inputs.metrics
    return {
        "model_hash": inputs.model_hash, "data_hash": inputs.hashes.get(p.paths.shards, ""),
        "raw_data_hash": inputs.hashes.get(p.paths.raw, ""),
        "labels": json_labels(inputs.meta["classes"]), "model_kind": inputs.meta["kind"],
        "train_model": p.train.model, "gate_metric": inputs.metric,
        "train_rows": str(len(inputs.train_rows)),
        "test_accuracy": f"{m['accuracy']:.6f}", "test_f1_macro": f"{m['f1_macro']:.6f}",
        "data_source": p.ingest.source, **evidence_tags(m), **extra,
        **({"test_rows": str(m["n_test"])} if isinstance(m.get("n_test"), int) else {}),
    }


def evidence_tags(m: dict[str, Any]) -> dict[str, str]:
    """Evaluate's evidence as version tags (the dashboard reads them): the 95% CIs of accuracy
    and macro F1, the ECE, the behavioural pass rate, the slice table as compact JSON
    {"DIM=VALUE": [rows, accuracy, low, high]} (only slices with min_rows rows: evaluate keeps
    no others) and the columns not sliced with their reason. Absent numbers are left out."""
    tags: dict[str, str] = {}
    for metric, ci in (m.get("ci") or {}).items():
        if metric in ("accuracy", "f1_macro"):
            tags[f"test_{metric}_ci"] = f"{ci['low']:.6f},{ci['high']:.6f}"
    if m.get("ece") is not None:
        tags["test_ece"] = f"{m['ece']:.6f}"
    if (m.get("behaviour") or {}).get("pass_rate") is not None:
        tags["behaviour_pass_rate"] = f"{m['behaviour']['pass_rate']:.6f}"
    table = {f"{dim}={value}": [row["rows"], round(row["accuracy"], 6),
                                round(row["ci"].get("accuracy", {}).get("low", float("nan")), 6),
                                round(row["ci"].get("accuracy", {}).get("high", float("nan")), 6)]
             for dim, values in (m.get("slices") or {}).items() for value, row in values.items()}
    if table:
        tags["test_slices"] = json.dumps(table)
    skipped = [s for s in m.get("slices_skipped") or [] if isinstance(s, dict)]
    if skipped:
        tags["test_slices_skipped"] = "; ".join(f"{s['column']}: {s['reason']}" for s in skipped)
    return tags


def json_labels(classes: list[Any]) -> str:
    """The label-set tag (sorted JSON list of strings)."""
    return json.dumps(sorted(str(c) for c in classes))


def champion_view(inputs: DeployInputs, champ: Any) -> ChampionView:
    """The champion's side of the gate: rows neither model trained on, and its predictions on
    them when it is comparable (scored from a downloaded copy of the version)."""
    labels = registry.labels_of(champ)
    texts = inputs.test["text"].tolist()
    with registry.downloaded(inputs.name, str(champ.version)) as local:
        rows = registry.trained_rows(local)
        if rows is None:
            log.warning("deploy: champion version %s has no %s; its training rows are unknown "
                        "and exclude nothing", champ.version, registry.TRAIN_ROWS_FILE)
        keep = untrained_mask(texts, inputs.train_rows, rows)
        why = not_comparable_why(inputs.meta["classes"], labels, inputs.test["label"].tolist(),
                                 int(keep.sum()), int((~keep).sum()), inputs.params.deploy)
        predicted = None if why else registry.predict_labels(
            local, [t for t, k in zip(texts, keep, strict=True) if k])
    return ChampionView(str(champ.version), labels, keep, predicted)


def deploy(inputs: DeployInputs, run_id: str, extra_tags: dict[str, str],
           journal: Journal | None = None, project: Project | None = None) -> dict[str, Any]:
    """Register the model if it changed, gate it against the champion, move the alias (champion,
    or `pending` under deploy.approval: manual; the move recorded in `journal` too); write
    metrics/deploy.json in every case (also 'unchanged'). With `project`, a new version also gets
    its lineage record and model card as run artifacts. Returns the run summary's deploy
    record: `version` is the live (champion) version, `candidate_version` the one judged."""
    name = inputs.name
    client = registry.mlflow_client()
    existing = registry.version_with_hash(client, name, inputs.model_hash)
    champ = registry.current_champion(client, name)
    if existing is not None:
        decision = unchanged(str(existing.version), champ and str(champ.version), inputs.metric)
        return _finish(inputs, decision, registered=False)
    version = registry.register(name, inputs.model_dir, inputs.meta, inputs.train_rows, run_id,
                                inputs.params.model_dump(mode="json"),
                                version_tags(inputs, extra_tags))
    view = None if champ is None else champion_view(inputs, champ)
    decision = awaiting_approval(
        decide(inputs.test["label"].tolist(), inputs.predicted, inputs.meta["classes"], view,
               inputs.params.deploy, inputs.metric, evidence(inputs)), inputs.params.deploy)
    decision.candidate_version = str(version.version)
    if inputs.params.deploy.mode == "shadow" and champ is not None:  # the first model serves
        decision.alias = inputs.params.shadow.alias
    if project is not None:
        record_lineage(project, run_id, name, str(version.version), extra_tags, decision)
    registry.record(name, str(version.version), decision, run_id, journal)
    return _finish(inputs, decision, registered=True)


def record_lineage(project: Project, run_id: str, name: str, version: str,
                   extra_tags: dict[str, str], decision: GateDecision) -> None:
    """The lineage record and the model card as artifacts of the run that registered
    `version`, and the version tags that point at them (what `textloop lineage` and the
    dashboard read later, whatever the workspace looks like then)."""
    record = lineage.build_record(project, run_id, name, version, extra_tags)
    registry.log_run_text(run_id, json.dumps(record, indent=2, sort_keys=True, default=str),
                          lineage.ARTIFACT)
    text = card.render(card.gather(project, record, {"model_name": name, **decision.to_dict()}))
    registry.log_run_text(run_id, text, card.ARTIFACT)
    client = registry.mlflow_client()
    for key, value in (("lineage", lineage.ARTIFACT), ("model_card", card.ARTIFACT),
                       ("git_commit", record["git_commit"]),
                       ("prefect.flow_run_id", record["prefect_flow_run_id"])):
        client.set_model_version_tag(name, version, key, value)


def _finish(inputs: DeployInputs, decision: GateDecision, registered: bool) -> dict[str, Any]:
    """Write metrics/deploy.json and build the summary record, both from the one decision."""
    record = {"model_name": inputs.name, **decision.to_dict()}
    write_json(inputs.decision_path, record)
    log.info("deploy: %s", decision.reason)
    return {"registered": registered, "model_name": inputs.name,
            "version": decision.live_version, "candidate_version": decision.candidate_version,
            "champion_version": decision.champion_version,
            "promoted": decision.promote and not decision.shadowed, "alias": decision.alias,
            "outcome": decision.outcome, "reason": decision.reason,
            "summary": decision.summary(inputs.name), "decision": record}
