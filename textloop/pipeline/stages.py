"""`textloop stage NAME`: thin wiring from params.yaml paths to the plain functions in tasks/.
Each stage reads its declared inputs, calls tasks/, writes its declared outputs, logs to MLflow."""

from __future__ import annotations

import logging
import os
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textloop.core.layout import Project
from textloop.core.progress import step
from textloop.pipeline import tracking
from textloop.pipeline.tracking import write_json

if TYPE_CHECKING:
    import pandas as pd  # imported where a stage reads a frame: `sources` never needs it

log = logging.getLogger(__name__)


def _fresh_dir(path: Path) -> Path:
    """Stage outputs are rebuilt from scratch (DVC semantics)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write a stage's Parquet output, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)


def _publish(project: Project, stage: str, cfg: Any, report_path: str, report: dict,
             skip: tuple[str, ...] = (), artifacts: dict[str, Any] | None = None) -> None:
    """A data stage's report as its DVC metric file, and its params and numbers as its MLflow
    stage run (keys in `skip` are tables, not numbers; `artifacts`: name -> JSON-able object
    logged as an artifact of that run)."""
    write_json(project.path(report_path), report)
    with tracking.stage_run(project, stage) as run:
        run.params(cfg.model_dump(), stage)
        run.numbers({k: v for k, v in report.items() if k not in skip}, f"{stage}.")
        for name, obj in (artifacts or {}).items():
            run.log_dict(obj, name)


def sources(project: Project) -> None:
    """Fingerprint what the pipeline reads from outside the DVC workspace, so DVC reruns a stage
    only when it changed: the configured data sources (for ingest) and, per stage, the code it
    runs (textloop.pipeline.code_deps; each stage depends on its own file)."""
    from tasks.ingest import fingerprint
    from textloop.pipeline.code_deps import add_user_code, write_fingerprints
    from textloop.pipeline.dag import stage_names

    p = project.params()
    write_json(project.path(p.paths.sources), fingerprint(p.ingest, project.root))
    others = [n for n in stage_names(project.root) if n != "sources" and n in wired()]
    written = write_fingerprints(_fresh_dir(project.path(p.paths.code)), others)
    if p.label.functions is not None and (lbl := project.path(p.paths.code) / "label.json") in written:
        add_user_code(lbl, {p.label.functions: project.path(p.label.functions)})  # user LFs


def ingest(project: Project) -> None:
    """Source(s) + feedback store, less erased texts (tombstones) -> raw snapshot (tasks.ingest's
    plan, run by the executor: in partitions when the data source is a Parquet file with more
    rows than backend.partition_above)."""
    from tasks.ingest import _test_source
    from tasks.ingest.ingest_plan import INGEST_PLAN, IngestRun, source_batches, source_rows
    from tasks.ingest.tombstones import read_tombstones
    from textloop.core.config import model_name
    from textloop.pipeline.executor import ParquetOut, run_frames, use_partitions

    p = project.params()
    sources = project.path(p.paths.sources)  # the fingerprint ingest must agree with
    expected = tracking.read_json(sources) if sources.is_file() else None
    tombstones = read_tombstones(project.path(p.paths.tombstones))["text_hash"]
    partitioned = use_partitions(p.backend, source_rows(p.ingest, project.root))
    report: dict[str, Any] = {"sources": {}}
    frames = source_batches(p.ingest, project.root, project.path(p.paths.feedback), model_name(p),
                            expected, report, p.backend.partition_rows if partitioned else None)
    run = IngestRun(frozenset(tombstones), p.text, p.label.merge_case, p.ingest.source,
                    _test_source(p.ingest, project.root), p.ingest.encoding)
    report.update(run_frames(INGEST_PLAN, run, frames, {"raw": ParquetOut(project.path(p.paths.raw))},
                             project, "ingest", partitioned))
    _publish(project, "ingest", p.ingest, p.paths.ingest_report, report)


def clean(project: Project) -> None:
    """Raw -> clean rows + quarantine with reasons (tasks.clean's plan, run by the executor)."""
    from tasks.clean.clean_parts import CLEAN_PLAN
    from textloop.pipeline.executor import ParquetOut, run_plan

    p = project.params()
    sinks = {"kept": ParquetOut(project.path(p.paths.clean)),
             "quarantine": ParquetOut(project.path(p.paths.quarantine) / "clean.parquet")}
    report = run_plan(CLEAN_PLAN, p.clean, project.path(p.paths.raw), sinks, project, "clean")
    _publish(project, "clean", p.clean, p.paths.clean_report, report)


def label(project: Project) -> None:
    """Clean -> trusted rows for training + a labeling queue (tasks.label's TRUST_PLAN, run by
    the executor); with label-error detection, weak labels or pseudo-labels on
    (textloop.pipeline.label_steps, as params.yaml `label` says) over the whole frame."""
    from tasks.label import split_trusted, whole_frame_steps
    from tasks.label.trust_plan import TRUST_PLAN
    from textloop.pipeline.executor import CsvOut, ParquetOut, Partition, read_partition, run_plan
    from textloop.pipeline.label_steps import extend

    p = project.params()
    source = project.path(p.paths.clean)
    if whole_frame_steps(p.label):
        if p.backend.partitioned is True:
            log.warning("label: issues/functions/pseudo need the whole frame: run in memory")
        import pandas as pd

        clean = pd.read_parquet(source)
        out = extend(project, p, clean, *split_trusted(clean, p.label))
        return _label_outputs(project, out, out.report)
    sinks = {"labeled": ParquetOut(project.path(p.paths.labeled)),
             "queue": CsvOut(project.path(p.paths.label_queue))}
    report = run_plan(TRUST_PLAN, p.label, source, sinks, project, "label")
    no_rows = read_partition(Partition(str(source), (), 0, 0))
    _label_outputs(project, extend(project, p, no_rows, *split_trusted(no_rows, p.label)), report,
                   partial=True)


def _label_outputs(project: Project, out: Any, report: dict, partial: bool = False) -> None:
    """Write the label stage's outputs (LabelOutputs) and publish its report; `partial`: the
    executor already wrote labeled rows and the queue."""
    p = project.params()
    if not partial:
        _write_parquet(out.labeled, project.path(p.paths.labeled))
        out.queue.to_csv(project.path(p.paths.label_queue), index=False)
    _write_parquet(out.quarantined, project.path(p.paths.quarantine) / "label.parquet")
    _write_parquet(out.issues, project.path(p.paths.label_issues))
    _write_parquet(out.weak, project.path(p.paths.weak_labels))
    _publish(project, "label", p.label, p.paths.label_report, report, skip=("labels",),
             artifacts={"label_report.json": report})


def shard(project: Project) -> None:
    """Trusted rows -> train/val/test Parquet shards + split report (tasks.shard's plan, run by
    the executor)."""
    from tasks.shard.shard_parts import SHARD_PLAN, write_shard_stream
    from textloop.pipeline.executor import ParquetOut, StreamOut, run_plan

    p = project.params()
    folder = project.path(p.paths.shards)

    def shards(frames: Any) -> None:
        write_shard_stream(frames, _fresh_dir(folder), p.shard.rows_per_shard)

    sinks = {"assigned": StreamOut(shards),
             "quarantine": ParquetOut(project.path(p.paths.quarantine) / "shard.parquet")}
    report = run_plan(SHARD_PLAN, p.shard, project.path(p.paths.labeled), sinks, project, "shard")
    _publish(project, "shard", p.shard, p.paths.split_report, report)


def _splits(project: Project) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train shard's rows training may use (label.use_weak, label.pseudo.enabled) and the
    val shard."""
    from textloop.core.splits import read_split, training_rows

    p = project.params()
    folder = project.path(p.paths.shards)
    train = training_rows(read_split(folder, "train"), p.label.use_weak, p.label.pseudo.enabled)
    return train, read_split(folder, "val")


def _log_metric(run: tracking.RunLog, name: str, value: float, at: int | None) -> None:
    """on_metric callback: per-step curves (loss, lr, val scores) into the stage's MLflow run;
    each validation score is also a progress step."""
    run.log_metrics({name: float(value)}, step=at)
    if name.startswith("val_") and at is not None:
        step("step %d: %s %.4f", at, name, value)


def _shown(values: dict[str, Any]) -> str:
    """A trial's settings as a short line: `C=2.5 char_ngram_max=5`."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())


def train(project: Project) -> None:
    """Train shards -> a model folder (baseline or transformer, per train.model) + the fitted
    features optimize reuses (paths.features)."""
    from tasks.train.fit import train_model

    p = project.params()
    train_df, val_df = _splits(project)
    out = _fresh_dir(project.path(p.paths.train_model))
    features = _fresh_dir(project.path(p.paths.features))
    with tracking.stage_run(project, "train") as run:
        run.params(p.train.model_dump(), "train")
        step("fitting %s on %d rows, scoring %d validation rows", p.train.model, len(train_df),
             len(val_df))
        metrics = train_model(train_df, val_df, p, out, on_metric=partial(_log_metric, run),
                              checkpoint_dir=project.path(p.paths.checkpoints),
                              features_dir=features)
        run.numbers(metrics, "val.")
    write_json(project.path(p.paths.train_metrics), metrics)


def optimize(project: Project) -> None:
    """Search (baseline) or compress (transformer) on val; the final model folder."""
    from tasks.evaluate.metrics import gate_metric
    from tasks.optimize.tune import optimize_model

    p = project.params()
    train_df, val_df = _splits(project)
    metric = gate_metric(p.evaluate.gate_metric, train_df["label"].astype(str).tolist(),
                         p.shard.min_class_share)  # `auto` resolved as the deploy gate does
    p = p.model_copy(update={"evaluate": p.evaluate.model_copy(update={"gate_metric": metric})})
    out = _fresh_dir(project.path(p.paths.model))
    with tracking.stage_run(project, "optimize") as run:
        run.params(p.optimize.model_dump(), "optimize")

        data, done = tracking.data_label(p.ingest.source), []

        def on_trial(number: int, params: dict, metrics: dict) -> None:
            done.append(number)
            count = (f"{len(done)}/{p.optimize.n_trials}" if len(done) <= p.optimize.n_trials
                     else "refit")  # the finalist refitted on all rows
            step("trial %s (#%d) %s -> %s %.4f", count, number, _shown(params), metric,
                 metrics.get(metric, float("nan")))
            with run.nested(tracking.run_name(f"optimize trial {number}", data)) as trial:
                trial.log_params({k: str(v) for k, v in params.items()})
                trial.numbers(metrics, "val.")

        report = optimize_model(train_df, val_df, p, project.path(p.paths.train_model), out,
                                on_trial=on_trial, features_dir=project.path(p.paths.features),
                                pinned=_pinned_tfidf(project))
        if report.get("pinned"):
            run.set_tags({f"optimize.pinned.{k}": str(v) for k, v in report["pinned"].items()})
        run.numbers({k: v for k, v in report.items() if k != "trials"}, "optimize.")
    write_json(project.path(p.paths.optimize_report), report)


def _pinned_tfidf(project: Project) -> frozenset[str]:
    """The train.tfidf fields the user set explicitly (explicit_settings): optimize keeps them."""
    from textloop.core.config import explicit_settings

    prefix = "train.tfidf."
    return frozenset(k[len(prefix):] for k in explicit_settings(project.params_path)
                     if k.startswith(prefix))


def evaluate(project: Project) -> None:
    """Final model + test shards -> the full report, the headline metrics.json (what DVC
    shows), the slice and per-class tables and the confusion matrix (DVC plots)."""
    from tasks.evaluate.metrics import evaluate as run
    from tasks.evaluate.metrics import headline, per_class_records, plot_confusion
    from tasks.evaluate.slices import slice_records
    from textloop.core.splits import human_rows, read_split
    from textloop.pipeline.models import load_classifier

    p = project.params()
    model = load_classifier(project.path(p.paths.model))
    test = human_rows(read_split(project.path(p.paths.shards), "test"))  # test = people's labels
    step("scoring %d test rows", len(test))
    metrics, preds = run(model, test, progress=True)
    plots = _fresh_dir(project.path(p.paths.eval_plots))
    metrics, reliability = _evidence(project, model, test, preds, metrics, plots)
    preds[["actual", "predicted"]].to_csv(plots / "confusion.csv", index=False)
    png = plot_confusion(preds, plots / "confusion_matrix.png", f"test (n={len(test)})")
    _write_parquet(preds, project.path(p.paths.eval_predictions))
    write_json(project.path(p.paths.eval_report), metrics)
    write_json(project.path(p.paths.eval_metrics), headline(metrics))
    write_json(project.path(p.paths.eval_slices), slice_records(metrics["slices"]))
    write_json(project.path(p.paths.eval_per_class), per_class_records(metrics["per_class"]))
    with tracking.stage_run(project, "evaluate") as tracked:
        tracked.numbers(headline(metrics), "test.")
        tracked.log_artifact(png, "plots")
        tracked.log_artifact(reliability, "plots")
        tracked.log_dict(metrics["per_class"], "classification_report.json")
        tracked.log_dict({"slices": metrics["slices"], "skipped": metrics["slices_skipped"]},
                         "slices.json")


def _evidence(project: Project, model: Any, test: pd.DataFrame, preds: pd.DataFrame,
              metrics: dict, plots: Path) -> tuple[dict, Path]:
    """The evidence added to evaluate's metrics: bootstrap 95% CIs, ECE and the reliability
    diagram (PNG, a DVC plot), per-slice metrics (slices below min_rows left out, columns that
    are no slice key skipped with their reason), behavioural pass rates."""
    from tasks.evaluate.metrics import add_calibration, add_confidence_intervals, plot_reliability
    from tasks.evaluate.slices import slice_keys, slice_metrics

    p = project.params()
    e = p.evaluate
    step("confidence intervals (%d bootstrap samples), calibration, slices", e.bootstrap_samples)
    metrics = add_confidence_intervals(metrics, preds, e.bootstrap_samples, e.bootstrap_seed)
    metrics = add_calibration(metrics, preds, e.calibration_bins)
    keys, skipped = slice_keys(test, e.slices)
    metrics["slices"] = slice_metrics(preds["actual"], preds["predicted"], keys,
                                      e.bootstrap_samples, e.bootstrap_seed, e.slices.min_rows)
    metrics["slices_skipped"] = skipped
    step("behavioural suite")
    metrics["behaviour"] = _behaviour(project, model)
    png = plot_reliability(metrics["calibration"], metrics["ece"], plots / "reliability.png")
    return metrics, png


def _behaviour(project: Project, model: Any) -> dict[str, Any] | None:
    """The behavioural suite's results (tasks.evaluate.behaviour), None when disabled or the suite file
    (paths.behaviour_suite) is absent."""
    from tasks.evaluate.behaviour import load_suite, run_suite

    p = project.params()
    suite = project.path(p.paths.behaviour_suite)
    if not p.evaluate.behaviour.enabled or not suite.is_file():
        log.info("evaluate: no behavioural suite run (%s)", "disabled" if suite.is_file()
                 else f"{suite} absent")
        return None
    return run_suite(load_suite(suite), model)


def wired() -> set[str]:
    """Stage names this module can run: its public functions (not the dispatch helpers)."""
    return {n for n, f in globals().items() if callable(f) and not n.startswith("_")
            and getattr(f, "__module__", None) == __name__ and n not in ("run_stage", "wired")}


def run_stage(name: str, project: Project) -> None:
    """Dispatch `textloop stage NAME`: NAME must be a stage of the project's dvc.yaml (the one
    stage list) that this module wires. The settings files must be those the run started with
    (RUN_DIGEST_ENV, set by the lifecycle flow; else those this stage started with) at its start
    and at its end. Raises UserError otherwise."""
    from textloop.core.config import RUN_DIGEST_ENV, check_settings_unchanged, settings_files_digest
    from textloop.core.errors import UserError
    from textloop.pipeline.dag import stage_names

    names = stage_names(project.root)
    if name not in names or name not in wired():
        raise UserError(f"unknown stage {name!r} (stages: {', '.join(n for n in names if n in wired())})")
    started = os.environ.get(RUN_DIGEST_ENV)
    if started is None:  # `dvc repro` by hand: the files as this stage starts
        started = settings_files_digest(project.params_path)
    else:
        check_settings_unchanged(project.params_path, started)
    globals()[name](project)
    check_settings_unchanged(project.params_path, started)  # before DVC records it in dvc.lock
