"""The `monitor` flow: read the prediction log, compare it with the training reference, write a
report (JSON + PNG, DB row, MLflow run), then let the retrain policy decide (the retrain_policy task: the rule lives in
tasks/monitor/retrain_rule.py, its wiring in textloop/loop/retrain_policy.py)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from textloop.core.layout import Project, configure, find_project
from textloop.loop.retrain_policy import policy_db_url


@task(task_run_name="retrain-policy", cache_policy=NO_CACHE)
def retrain_policy(root: str, report: Mapping[str, Any] | None,
                   mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Decide on a monitor report; when it fires, export feedback and start the lifecycle."""
    from textloop.loop.retrain_policy import log_decision, policy_context, run_policy

    ctx = policy_context(Project(Path(root)))
    decision = dataclasses.asdict(run_policy(ctx, report, trigger="monitor"))
    log_decision(mlflow_run_id, decision)
    logger = get_run_logger()
    logger.info("retrain %s: %s", "FIRED" if decision["fire"] else "not fired",
                "; ".join(decision["reasons"] + decision["blocked"]))
    return decision


@task(task_run_name="read-prediction-log", cache_policy=NO_CACHE)
def read_log(db_url: str, window: int, reference: int) -> dict[str, Any]:
    """Recent predictions, the served version's first `reference` predictions (the fixed
    confidence reference), labeled ones."""
    from textloop.loop import db

    engine = db.open_db(db_url)
    current = db.read_predictions(engine, window)
    baseline = None
    if len(current):
        served = str(current["model_version"].iloc[0])
        baseline = db.read_predictions(engine, reference, served, oldest_first=True)
    return {"current": current, "baseline": baseline, "labeled": db.read_labeled(engine, window)}


@task(task_run_name="retention-purge", cache_policy=NO_CACHE)
def retention_purge(db_url: str, retention_days: float | None, root: str | None = None
                    ) -> dict[str, Any]:
    """serve.retention_days: empty the raw text of older predictions and of every copy of them
    (feedback on them, queue items; recorded in `purges`)."""
    from textloop.core.layout import Project
    from textloop.loop import db
    from textloop.loop.privacy import purge_texts

    return purge_texts(db.open_db(db_url), retention_days,
                       project=Project(Path(root)) if root else None)


@task(task_run_name="training-reference", cache_policy=NO_CACHE)
def training_reference(shards: str, rows: int) -> Any:
    """Vocabulary, lengths and class mix of the train shard (None before the first training)."""
    from tasks.monitor.live_metrics import build_reference
    from textloop.core.errors import UserError
    from textloop.core.splits import read_split

    try:
        train = read_split(Path(shards), "train")
    except UserError:
        return None
    return build_reference(train[["text", "label"]], rows)


@task(task_run_name="publish-report", cache_policy=NO_CACHE)
def publish(root: str, report: dict[str, Any], current: Any, ref: Any) -> dict[str, Any]:
    """Write report.json + plots, store the summary row, log the report as an MLflow run."""
    from tasks.monitor.live_metrics import summary_metrics, write_report
    from textloop.loop import db

    project = Project(Path(root))
    stamp = db.utcnow().strftime("%Y%m%dT%H%M%S%f")
    folder = project.layout.monitor / stamp
    files = write_report(report, current, ref, folder)
    metrics = summary_metrics(report)
    engine = db.open_db(policy_db_url(project))
    db.insert_row(engine, db.monitor_reports, {
        "model_version": report.get("served_version"), "n_predictions": report["n_predictions"],
        "n_feedback": report["accuracy"]["n_labeled"],
        "live_accuracy": metrics.get("live_accuracy"), "class_psi": metrics.get("class_psi"),
        "oov_increase": metrics.get("oov_increase"),
        "confidence_mean": metrics.get("confidence_mean"), "alerts": report["alerts"],
        "report": report, "report_path": str(files[0])})
    run_id = log_to_mlflow(project, report, metrics, folder)
    return {"folder": str(folder), "files": [str(f) for f in files], "mlflow_run_id": run_id}


def log_to_mlflow(project: Project, report: dict[str, Any], metrics: dict[str, float],
                  folder: Path) -> str:
    """One MLflow run per report in the monitor experiment: metrics, alerts, JSON and plots."""
    import mlflow

    name = project.params().monitor.experiment
    mlflow.set_tracking_uri(project.tracking_uri)
    exp = mlflow.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(
        name, artifact_location=project.experiment_artifacts("monitor"))
    client = mlflow.MlflowClient()
    run = client.create_run(exp_id, run_name=f"monitor-{folder.name}",
                            tags={"textloop.flow": "monitor",
                                  "served_version": str(report.get("served_version")),
                                  "alerts": "; ".join(report["alerts"])[:5000]})
    run_id = run.info.run_id
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_artifacts(run_id, str(folder))
    client.set_terminated(run_id)
    return run_id


_ENCODER: Any = None  # the MiniLM encoder (and its embedding cache) kept across monitor runs


@task(task_run_name="embedding-drift", cache_policy=NO_CACHE)
def embedding_section(shards: str, current: list[str], cfg: Any) -> dict[str, Any]:
    """Domain-classifier drift on MiniLM embeddings of the train shard vs the recent texts."""
    from tasks.monitor.embedding_drift import MiniLMEncoder, embedding_drift, sample
    from textloop.core.splits import read_split

    global _ENCODER
    if _ENCODER is None:
        _ENCODER = MiniLMEncoder(cfg.embedding.batch_size, cfg.embedding.max_seq_len)
    train = read_split(Path(shards), "train")["text"].astype(str).tolist()
    return embedding_drift(sample(train, cfg.embedding.max_rows), current, cfg, _ENCODER)


@task(task_run_name="alerts", cache_policy=NO_CACHE)
def send_alerts(root: str, report: dict[str, Any], out: dict[str, Any]) -> list[str]:
    """drift / accuracy_drop / labeling_queue events of this report to the alert sinks."""
    from textloop.loop.alerts import emit_for

    project = Project(Path(root))
    params = project.params()
    sent, base = [], {"report": out["files"][0], "mlflow_run_id": out["mlflow_run_id"],
                      "served_version": report.get("served_version")}
    drift = [a for a in report["alerts"] if not a.startswith("live accuracy")]
    accuracy = [a for a in report["alerts"] if a.startswith("live accuracy")]
    for event, lines in (("drift", drift), ("accuracy_drop", accuracy)):
        if lines:
            emit_for(project, event, {**base, "alerts": lines})
            sent.append(event)
    queue = project.path(params.paths.label_queue)
    rows = sum(1 for _ in queue.open(encoding="utf-8")) - 1 if queue.is_file() else 0
    if rows > params.alerts.queue_over:
        emit_for(project, "labeling_queue", {**base, "rows": rows,
                                             "threshold": params.alerts.queue_over})
        sent.append("labeling_queue")
    return sent


@task(task_run_name="shadow-policy", cache_policy=NO_CACHE)
def shadow_task(root: str) -> dict[str, Any]:
    """Promote or retire the challenger in shadow (textloop/loop/shadow_decisions.py)."""
    from textloop.loop.shadow_decisions import shadow_policy

    return shadow_policy(Project(Path(root)))


def reap(project: Project) -> dict[str, Any]:
    """On start: mark lifecycle runs whose process is gone (best effort, never fatal)."""
    from textloop.loop.gc import reap_crashed

    try:
        return reap_crashed(project, by="monitor")
    except Exception as exc:  # clean-up must not stop the monitor
        logging.getLogger(__name__).exception("crashed-run clean-up failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


@flow(name="monitor")
def monitor(act: bool = True) -> dict[str, Any]:
    """Purge old raw texts (serve.retention_days), report live accuracy and drift; with `act`,
    run the retrain policy on the report."""
    from tasks.monitor.live_metrics import build_report

    logger = get_run_logger()
    project = find_project()
    configure(project)
    params = project.params()
    purge = retention_purge(policy_db_url(project), params.serve.retention_days,
                            str(project.root))
    logger.info("retention: %d prediction text(s) purged (older than %s days)",
                purge["rows_purged"], purge["retention_days"])
    reaped = reap(project)
    ref = training_reference(str(project.path(params.paths.shards)), params.monitor.reference_rows)
    if ref is None:
        logger.warning("no train shard yet: nothing to compare with; run the lifecycle first")
        return {"skipped": "no training reference"}
    log = read_log(policy_db_url(project), params.monitor.window,
                   params.monitor.confidence_reference)
    report = build_report(log["current"], log["baseline"], log["labeled"], ref, params.monitor,
                          params.feedback.min_accuracy)
    if params.monitor.embedding.enabled:
        from tasks.monitor.embedding_drift import alert

        report["embedding_drift"] = embedding_section(
            str(project.path(params.paths.shards)),
            log["current"]["text"].astype(str).tolist(), params.monitor)
        if line := alert(report["embedding_drift"]):
            report["alerts"].append(line)
            report["drift"] = True
    out = publish(str(project.root), report, log["current"], ref)
    events = send_alerts(str(project.root), report, out)
    logger.info("monitor: %d predictions, alerts: %s", report["n_predictions"],
                "; ".join(report["alerts"]) or "none")
    decision = retrain_policy(str(project.root), report, out["mlflow_run_id"]) if act else None
    shadow = shadow_task(str(project.root)) if act else None
    return {"alerts": report["alerts"], "accuracy": report["accuracy"]["accuracy"],
            "report": out["files"][0], "mlflow_run_id": out["mlflow_run_id"], "decision": decision,
            "shadow": shadow, "events": events, "reaped": reaped}
