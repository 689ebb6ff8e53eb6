"""The `lifecycle` flow: DVC stages in DAG order (one Prefect task each), then deploy and
feedback bookkeeping, the workspace held under a crash-safe OS lock (one run at a time; a
killed holder frees it at once and is marked crashed by the next run)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from flows.run_arguments import collect_overrides
from textloop.core.config import apply_overrides
from textloop.core.layout import Project, configure, find_project
from textloop.core.lock import write_json_atomic
from textloop.core.progress import VERBOSE_ENV, verbose  # noqa: F401 (the CLI sets VERBOSE_ENV)
from textloop.loop.gc import (  # noqa: F401 (fail_mlflow_runs moved there; kept importable)
    fail_mlflow_runs,
    fail_orphans,
    recover_crashed,
)
from textloop.pipeline.dag import RAN, outputs_digest, prepare_workspace, stage_env
from textloop.pipeline.stage_progress import (
    PROGRESS,
    StageDisplay,
    captured_output,
    display_stream,
)
from textloop.pipeline.tracking import read_json

log = logging.getLogger(__name__)
# VERBOSE_ENV "1": echo every stage's full output (`textloop run --verbose`); PROGRESS: one line
# per stage and its steps while it runs, which the CLI shows (textloop.pipeline.stage_progress)
# A warning or error a stage logged through our own logging format: shown even when quiet.
OWN_WARNING = re.compile(r"^(WARNING|ERROR|CRITICAL) (textloop|tasks)[\w.]*: ")
# The last line of a Python traceback: the exception's type and message.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(: .*)?$")


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; `tail` holds the last lines of its output."""

    def __init__(self, message: str, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.tail = tail or []


def repro_stage(root: str, name: str, state: str, echo: bool = False) -> str:
    """Make one stage up to date given DVC's verdict `state` (textloop.pipeline.dag): skipped
    -> nothing to do; otherwise `dvc repro --single-item NAME` inside this process (DVC is
    imported once per run, not once per stage; it records the stage in dvc.lock and runs its
    command as a child process). The always-run check (`checked`) and `echo` stream the output
    live; else it is kept, its step lines are shown while it runs (StageDisplay) and our own
    warnings once it ends. Returns `state`. Raises
    StageFailed with the output's last lines."""
    from dvc.exceptions import DvcException

    from textloop.pipeline.dag import CHECKED, SKIPPED, reproduce_here

    if state == SKIPPED:
        return state
    live = echo or state == CHECKED
    if echo:  # what `dvc repro` itself printed when it ran as a subprocess (--verbose)
        PROGRESS.info("Running stage '%s':", name)
    failure: DvcException | None = None
    display = contextlib.nullcontext() if live else StageDisplay(name, display_stream())
    with stage_env(), display as shown, (
            contextlib.nullcontext([""]) if live else captured_output(shown.line)) as out:
        try:
            reproduce_here(Path(root), name, quiet=not echo)
        except DvcException as exc:
            failure = exc
    lines = [line for line in out[-1].splitlines() if line.strip()]
    if failure is not None:
        cause = f"stage {name} failed: {failure.__cause__ or failure}"
        why = failure_line(lines)
        raise StageFailed(f"stage {name} failed: {why}" if why else cause,
                          [] if live else [*lines[-29:], cause])
    for line in lines:
        if OWN_WARNING.match(line):
            PROGRESS.warning("  %s: %s", name, line)
    return state


def failure_line(lines: list[str]) -> str | None:
    """What a failed stage's output says went wrong, for the run's one error line: textloop's
    own last `error:` line, else the last exception line of a traceback (`ValueError: ...`);
    None when it says neither (DVC's "exited with N" is all there is)."""
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    raised = [line for line in lines if EXCEPTION_LINE.match(line.strip())]
    return raised[-1].strip() if raised else None


@task(task_run_name="stage-{name}")
def dvc_stage(root: str, name: str, state: str) -> str:
    """One DVC stage as its own Prefect task (repro_stage); a skipped one is only reported."""
    logger = get_run_logger()
    try:
        repro_stage(root, name, state, echo=verbose())
    except StageFailed as exc:
        logger.error("stage %s output:\n%s", name, "\n".join(exc.tail))
        raise
    logger.info("stage %s: %s", name, state)
    return state


@task(retries=2, retry_delay_seconds=3, task_run_name="deploy")
def deploy_task(root: str, run_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """Register + gate + alias (MLflow store I/O: retried). Inputs are resolved here, once, from
    the workspace; the deploy step only decides and records (alias moves also in the loop
    database's alias history; lineage record and model card as run artifacts)."""
    from textloop.loop.aliases import db_journal, project_engine
    from textloop.pipeline.deploy_step import deploy, resolve_inputs

    project = Project(Path(root))
    return deploy(resolve_inputs(project), run_id, tags,
                  journal=db_journal(project_engine(project)), project=project)


def announce(project: Project, record: dict[str, Any]) -> None:
    """The run's alert events: run_failed, or the gate's version_promoted / version_refused /
    version_pending (deploy.approval: manual; a version set as challenger in shadow mode is
    version_promoted with its alias). Best
    effort: an alert never changes the run's outcome."""
    from textloop.loop.alerts import emit_for

    deploy = record.get("deploy") or {}
    if record.get("recovered") or record.get("orphans"):
        crashed = {k: record.get(k) for k in ("recovered", "orphans", "flow_run_id")}
        try:
            emit_for(project, "run_crashed", {"found_by": record.get("flow_run_id"), **crashed})
        except Exception:
            log.exception("could not send the run_crashed alert")
    if record.get("state") == "failed":
        event = "run_failed"
    elif deploy.get("outcome") in ("promoted", "refused", "pending"):
        event = f"version_{deploy['outcome']}"
    else:
        return
    payload = {k: record.get(k) for k in ("flow_run_id", "mlflow_run_id", "state", "error")}
    payload["deploy"] = {k: deploy.get(k) for k in ("model_name", "candidate_version", "alias",
                                                    "champion_version", "outcome", "reason")}
    try:
        emit_for(project, event, payload)
    except Exception:
        log.exception("could not send the %s alert", event)


@task(task_run_name="feedback-bookkeeping")
def feedback_bookkeeping(root: str) -> dict[str, Any]:
    """Record which feedback batches this training consumed (the watermark for `feedback check`)."""
    from tasks.feedback import write_watermark

    project = Project(Path(root))
    p = project.params()
    report = read_json(project.path(p.paths.ingest_report))
    files = report.get("sources", {}).get("feedback", {}).get("files", [])
    write_watermark(project.watermark_path, files)
    return {"feedback_files_consumed": len(files)}


def git_commit(root: Path) -> str:
    """The code version of this run (or 'none' outside git / before the first commit)."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "none"


def say(message: str) -> None:
    """A waiting notice: into the flow run's log (Prefect UI + console) when that logger is on,
    else this module's logger (the CLI silences Prefect's run loggers; no flow run: `.fn`)."""
    try:
        run_logger = get_run_logger()
    except MissingContextError:
        run_logger = None
    if run_logger is not None and run_logger.isEnabledFor(logging.WARNING):
        run_logger.warning(message)
    else:
        log.warning(message)


def save_record(project: Project, record: dict[str, Any]) -> None:
    """The run record `.textloop/last_run.json`, replaced atomically (status never reads half)."""
    write_json_atomic(project.last_run_path, record)


def log_lineage(project: Project, hashes: dict[str, str]) -> None:
    """Parent run: params, DVC hashes, test metrics and the dataset (digest = DVC hash)."""
    import mlflow
    import mlflow.data

    from textloop.core.splits import read_split
    from textloop.pipeline import tracking

    p = project.params()
    tracking.log_params(p.model_dump(mode="json", exclude={"paths"}), "params")
    mlflow.set_tags({tracking.mlflow_key("dvc.md5", k): v for k, v in hashes.items()})
    metrics_path = project.path(p.paths.eval_metrics)
    if metrics_path.is_file():
        metrics = read_json(metrics_path)
        tracking.log_numeric({k: v for k, v in metrics.items() if k != "per_class"}, "test.")
    shards = project.path(p.paths.shards)
    train = read_split(shards, "train")[["text", "label"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "source can be interpreted in multiple ways"
        ds = mlflow.data.from_pandas(train, source=str(shards), targets="label",
                                     name=f"{p.ingest.source}:train",
                                     digest=hashes.get(p.paths.shards))
    mlflow.log_input(ds, context="training")


def name_run(run_id: str, source: str, digest: str | None, decision: dict[str, Any]) -> None:
    """Rename the flow's MLflow run once the outcome is known: what ran, on which data (source
    and the train/val/test shards' DVC hash), which version came of it and what the gate did."""
    import mlflow

    from textloop.pipeline import tracking

    version = decision.get("candidate_version") or decision.get("version")
    outcome = decision.get("outcome") or ""
    name = tracking.run_name("lifecycle", tracking.data_label(source, digest),
                             f"v{version}" if version else "", str(outcome))
    mlflow.MlflowClient().set_tag(run_id, "mlflow.runName", name)


def _run_stages(project: Project, run_id: str, record: dict[str, Any]) -> dict[str, str]:
    """Every DVC stage in DAG order (DVC's graph of dvc.yaml), timed; DVC's status is asked
    in-process once, and again only after a stage did work; stage runs nest under the flow's
    MLflow run, recorded by each stage process and logged here after it (recorded_runs); every
    stage sees the settings files as they were when the stages began (check_settings_unchanged).
    From the first stage whose command will run, a stage fork server (textloop.stage_forks,
    `run.stage_forks`) runs the commands with their imports done once; stopped at the end.
    Returns {stage: ran | restored | skipped | checked}."""
    from textloop.core.config import RUN_DIGEST_ENV, check_settings_unchanged, settings_files_digest
    from textloop.pipeline.dag import record_interpreter, walk
    from textloop.pipeline.recorded_runs import flow_records
    from textloop.stage_forks import fork_server

    record_interpreter(project)
    os.environ[RUN_DIGEST_ENV] = started = settings_files_digest(project.params_path)
    states, seconds = {}, record.setdefault("stage_seconds", {})
    cpu = record.setdefault("stage_cpu_seconds", {})
    try:
        with flow_records(project, run_id) as records, fork_server(
                project.layout.stage_forks_log, project.params().run.stage_forks) as forks:

            def run(name: str, verdict: str) -> str:
                if forks is not None and verdict == RAN:  # the first command that will run
                    forks.start()
                return stage_then_its_run(project, records, name, verdict)

            def spent() -> float:  # the live fork server's CPU, its children's included
                return cpu_seconds() + (forks.cpu_seconds() if forks is not None else 0.0)

            last = spent()
            for name, state, secs in walk(project.root, run):
                states[name], seconds[name] = state, secs
                now = spent()
                cpu[name], last = round(now - last, 2), now
                PROGRESS.info("%-10s %-9s %7.1f s", name, state, secs)
                check_settings_unchanged(project.params_path, started)  # also while skipping
        return states
    finally:
        os.environ.pop(RUN_DIGEST_ENV, None)


def stage_then_its_run(project: Project, records: Path, name: str, state: str) -> str:
    """Run one stage (dvc_stage), then log the MLflow run its process recorded, also when the
    stage failed after starting it (the stage's own error is the one raised)."""
    from textloop.pipeline.recorded_runs import log_recorded

    try:
        state = dvc_stage(str(project.root), name, state)
    except BaseException:
        try:
            log_recorded(project, records, name)
        except Exception:  # the stage's failure is the run's error
            log.exception("could not log the MLflow run of the failed stage %s", name)
        raise
    log_recorded(project, records, name)
    return state


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children (each stage's
    process): what a stage cost, which a shared machine stretches far less than its wall time."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _workspace(project: Project, changes: dict[str, Any], record: dict[str, Any],
               on_mlflow_run: Callable[[str], None]) -> None:
    """The guarded section: params edits, DVC stages, MLflow lineage, registration."""
    import mlflow

    from textloop.pipeline import remote, tracking
    from textloop.pipeline.dvc import dvc_hashes

    apply_overrides(project.params_path, changes)
    prepare_workspace(project)
    if remote.enabled(project):  # team: a worker's checkout first gets the data it lacks
        record["dvc_pull"] = remote.pull_missing(project)
    exp_id = tracking.setup(project)
    tags = {"prefect.flow_run_id": str(flow_run.get_id() or "none"),
            "prefect.flow_run_name": str(flow_run.get_name() or "none"),
            "git_commit": git_commit(project.root)}
    source = project.params().ingest.source
    with mlflow.start_run(experiment_id=exp_id,
                          run_name=tracking.run_name("lifecycle", tracking.data_label(source)),
                          tags={**tags, "textloop.flow": "lifecycle"}) as run:
        record["mlflow_run_id"] = run.info.run_id
        on_mlflow_run(run.info.run_id)
        states = _run_stages(project, run.info.run_id, record)
        record["dvc_outputs_sha256"] = outputs_digest(project.root)  # a no-op rerun compares it
        record["stages_run"] = [s for s, v in states.items() if v in ("ran", "restored")]
        record["stages_skipped"] = [s for s, v in states.items() if v == "skipped"]
        hashes = dvc_hashes(project.root)
        log_lineage(project, hashes)
    start, cpu = time.perf_counter(), cpu_seconds()
    record["deploy"] = deploy_task(str(project.root), run.info.run_id, tags)
    name_run(run.info.run_id, source, hashes.get(project.params().paths.shards), record["deploy"])
    record["stage_seconds"]["deploy"] = round(time.perf_counter() - start, 2)
    record["stage_cpu_seconds"]["deploy"] = round(cpu_seconds() - cpu, 2)
    record["feedback"] = feedback_bookkeeping(str(project.root))
    if remote.enabled(project):  # team: nothing a run needs stays only on this machine
        record["dvc_push"] = remote.push(project)


def lifecycle_run_name(data: str | None, project_source: Callable[[], str],
                       run_id: str | None) -> str:
    """The flow run's name in Prefect's UI says what ran, as the MLflow run names do:
    `lifecycle DATA ID8` (the source a --data run names, else the project's, as run names spell
    it; the first 8 characters of the flow run's id), not Prefect's random words."""
    from textloop.pipeline import tracking

    return tracking.run_name("lifecycle", tracking.data_label(data or project_source()),
                             (run_id or "")[:8])


def _name_this_run() -> str:
    """lifecycle_run_name for the flow run Prefect is starting; never fails the run (a project
    that cannot be read yet is named by the data alone, and the flow then reports the error)."""
    params = flow_run.parameters or {}
    run_id = str(flow_run.get_id() or "") or None
    try:
        return lifecycle_run_name(params.get("data"), lambda: find_project().params().ingest.source,
                                  run_id)
    except Exception:  # noqa: BLE001 (the name is cosmetic; the flow itself reports the cause)
        return lifecycle_run_name(params.get("data"), lambda: "data", run_id)


@flow(name="lifecycle", flow_run_name=_name_this_run)
def lifecycle(data: str | None = None, test_data: str | None = None, text_col: str | None = None,
              label_col: str | None = None, overrides: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """ingest → clean → label → shard → train → optimize → evaluate → deploy → feedback."""
    project = find_project()
    configure(project)
    changes = collect_overrides(project.params().ingest.source, data, test_data, text_col,
                                label_col, overrides)
    run_id = str(flow_run.get_id() or "none")
    record: dict[str, Any] = {"flow_run_id": run_id, "flow_run_name": flow_run.get_name(),
                              "overrides": changes, "state": "running",
                              "started_at": datetime.now(UTC).isoformat(), "pid": os.getpid()}
    # this run's --set run.lock_timeout_s counts already; params.yaml is edited under the lock
    lock = project.workspace_lock(apply_overrides(project.params_path, changes,
                                                  write=False).run.lock_timeout_s)
    lock.notify = say
    start = time.perf_counter()
    stale = lock.acquire(flow_run_id=run_id)
    record.update(host=lock.record["host"], lock_wait_s=round(time.perf_counter() - start, 2))
    try:
        if stale is not None:
            record["recovered"] = recover_crashed(project, stale, run_id)
        orphans = fail_orphans(project, run_id)  # lifecycle MLflow runs left RUNNING by the dead
        if orphans["mlflow_failed"]:
            record["orphans"] = orphans
        save_record(project, record)

        def on_mlflow_run(mlflow_run_id: str) -> None:
            lock.update(mlflow_run_id=mlflow_run_id)
            save_record(project, record)

        _workspace(project, changes, record, on_mlflow_run)
        record["state"] = "completed"
    except BaseException as exc:
        record.update(state="failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
        raise
    finally:
        record["finished_at"] = datetime.now(UTC).isoformat()
        try:
            save_record(project, record)
        finally:
            lock.release()
            announce(project, record)
    return record
