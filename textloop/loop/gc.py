"""Clean-up: crashed runs and storage retention.

- `reap_crashed`: runs whose process is gone are marked Crashed in Prefect and FAILED in MLflow
  (the lifecycle's MLflow run exists only while its process holds the workspace lock, so holding
  that lock proves every lifecycle MLflow run still RUNNING is dead).
- `collect`: `mlflow gc` (its API) for runs already deleted in MLflow, never a run behind a
  protected version; the DVC cache garbage-collected with dvc-data's own gc, keeping what the
  workspace needs plus every object of the champion, the challenger and the newest
  `gc.keep_versions` registered versions (rollback targets). `dry_run` lists what would go and
  how many bytes, and removes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from textloop.core.layout import Project
from textloop.core.lock import LockTimeout, describe

log = logging.getLogger(__name__)
DVC_HASH = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
CrashMarker = Callable[[str, str], bool]  # (flow run id, message) -> marked


def fail_mlflow_runs(project: Project, run_id: str, note: str) -> list[str]:
    """A dead run's MLflow run and its unfinished nested runs (stages, trials) -> FAILED, with
    the note as tag `textloop.crashed`. Returns the ids changed; finished runs are left alone."""
    from mlflow import MlflowClient

    from textloop.pipeline import tracking

    tracking.setup(project)
    client = MlflowClient()
    todo, failed = [client.get_run(run_id)], []
    exp = todo[0].info.experiment_id
    while todo:
        run = todo.pop()
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "textloop.crashed", note)
            client.set_terminated(run.info.run_id, status="FAILED")
            failed.append(run.info.run_id)
        todo.extend(client.search_runs([exp], f"tags.mlflow.parentRunId = '{run.info.run_id}'"))
    return failed


def _mark_crashed(flow_run_id: str, message: str) -> bool:
    """Mark a Prefect flow run crashed (the Prefect client is imported only when gc finds one)."""
    from textloop.loop.prefect_api import mark_crashed

    return mark_crashed(flow_run_id, message)


def recover_crashed(project: Project, holder: dict[str, Any], by: str,
                    mark: CrashMarker = _mark_crashed) -> dict[str, Any]:
    """The workspace holder died (its OS lock is gone, its record stayed): mark its MLflow run
    FAILED and its Prefect flow run Crashed. Best effort: a failure is logged, never raised."""
    from mlflow.exceptions import MlflowException

    from textloop.pipeline.dvc import repair_rwlock

    note = f"holder {describe(holder)} died; found by flow run {by}"
    out: dict[str, Any] = {"holder": holder, "mlflow_failed": [], "prefect_crashed": False}
    if holder.get("mlflow_run_id"):
        try:
            out["mlflow_failed"] = fail_mlflow_runs(project, holder["mlflow_run_id"], note)
        except (MlflowException, OSError) as exc:
            log.warning("could not mark MLflow run %s FAILED: %s", holder["mlflow_run_id"], exc)
    if holder.get("flow_run_id") not in (None, "none"):
        out["prefect_crashed"] = mark(holder["flow_run_id"], note)
    out["dvc_rwlock_repaired"] = repair_rwlock(project.root)
    return out


def reap_crashed(project: Project, by: str = "gc",
                 mark: CrashMarker = _mark_crashed) -> dict[str, Any]:
    """Mark dead lifecycle runs: takes the workspace lock without waiting (a live run holds it:
    nothing to do), recovers a dead holder's record, then fails every lifecycle MLflow run still
    RUNNING (and Crashes its Prefect run). Returns what it changed."""
    lock = project.workspace_lock(0)
    lock.notify = log.debug
    try:
        stale = lock.acquire(flow_run_id=by)
    except LockTimeout:
        return {"skipped": f"a live run holds the workspace: {describe(lock.holder())}"}
    try:
        out = recover_crashed(project, stale, by, mark) if stale else {"mlflow_failed": []}
        orphans = fail_orphans(project, by, mark)
        out["mlflow_failed"] += orphans["mlflow_failed"]
        if orphans["prefect_crashed_runs"]:
            out["prefect_crashed_runs"] = orphans["prefect_crashed_runs"]
        if out["mlflow_failed"] or stale:
            from textloop.loop.alerts import emit_for

            emit_for(project, "run_crashed", {"found_by": by, **out})
        return out
    finally:
        lock.release()


def fail_orphans(project: Project, by: str, mark: CrashMarker = _mark_crashed
                 ) -> dict[str, Any]:
    """Call only while holding the workspace lock: every lifecycle MLflow run still RUNNING
    belongs to a dead process -> FAILED (nested runs too), its Prefect run -> Crashed."""
    out: dict[str, Any] = {"mlflow_failed": [], "prefect_crashed_runs": []}
    for run_id, flow_run_id in _running_lifecycle_runs(project):
        note = f"its process is gone (no workspace holder); found by {by}"
        out["mlflow_failed"] += fail_mlflow_runs(project, run_id, note)
        if flow_run_id not in (None, "none"):
            out["prefect_crashed_runs"].append((flow_run_id, mark(flow_run_id, note)))
    return out


def _running_lifecycle_runs(project: Project) -> list[tuple[str, str | None]]:
    """(MLflow run id, Prefect flow run id) of lifecycle parent runs still RUNNING."""
    from mlflow import MlflowClient

    from textloop.pipeline import tracking

    exp = tracking.setup(project)
    runs = MlflowClient().search_runs(
        [exp], "attributes.status = 'RUNNING' and tags.`textloop.flow` = 'lifecycle'")
    return [(r.info.run_id, r.data.tags.get("prefect.flow_run_id")) for r in runs]


@dataclass
class GcReport:
    """What gc removed (or, in a dry run, would remove) and what it protected."""

    dry_run: bool
    protected_versions: dict[str, str] = field(default_factory=dict)  # version -> why
    mlflow_runs: list[str] = field(default_factory=list)
    mlflow_bytes: int = 0
    dvc_objects: int = 0
    dvc_bytes: int = 0
    dvc_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes": self.mlflow_bytes + self.dvc_bytes}


def protected_versions(client: Any, name: str, aliases: Iterable[str], keep: int
                       ) -> dict[str, tuple[Any, str]]:
    """version -> (ModelVersion, why) for every alias holder and the newest `keep` versions
    (search results carry no aliases, so each alias is resolved through the registry)."""
    from mlflow.exceptions import MlflowException

    from textloop.pipeline.registry import current_champion
    from textloop.pipeline.tracking import filter_literal

    try:
        versions = client.search_model_versions(f"name={filter_literal(name)}")
    except MlflowException:
        return {}
    newest = sorted((v for v in versions if v.name == name), key=lambda v: int(v.version),
                    reverse=True)[:keep]
    out = {str(v.version): (v, "newest") for v in newest}
    for alias in aliases:
        holder = current_champion(client, name, alias)
        if holder is not None:
            out[str(holder.version)] = (holder, alias)
    return out


def version_hashes(client: Any, version: Any) -> set[str]:
    """The DVC hashes a version needs: its lineage tags and its run's `dvc.md5.*` tags."""
    from mlflow.exceptions import MlflowException

    values = [version.tags.get(k, "") for k in ("model_hash", "data_hash", "raw_data_hash")]
    try:
        values += [v for k, v in client.get_run(version.run_id).data.tags.items()
                   if k.startswith("dvc.md5")]
    except MlflowException:
        log.warning("gc: run %s of version %s is gone; keeping its tagged hashes only",
                    version.run_id, version.version)
    return {v for v in values if DVC_HASH.match(v or "")}


def dvc_collect(root: Path, keep_hashes: set[str], dry_run: bool) -> tuple[int, int, int]:
    """Remove DVC cache objects neither the workspace nor `keep_hashes` need (a .dir hash keeps
    every file in it). Returns (objects removed, bytes, objects kept)."""
    from dvc.repo import Repo
    from dvc_data.hashfile.gc import gc as dvc_data_gc
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    removed = size = kept = 0
    with Repo(str(root)) as repo:
        used = {h for ids in repo.used_objs().values() for h in ids}
        for scheme, odb in repo.cache.by_scheme():
            if odb is None or scheme != "local":
                continue
            need = {h.value for h in used if h.name == odb.hash_name}
            for value in keep_hashes:
                need.add(value)
                if value.endswith(".dir") and odb.exists(value):
                    tree = Tree.load(odb, HashInfo(odb.hash_name, value))
                    need.update(hi.value for _, _, hi in tree if hi)  # (key, meta, hash_info)
            for oid in odb.all():
                if oid in need:
                    kept += 1
                    continue
                removed += 1
                path = Path(odb.oid_to_path(oid))
                size += path.stat().st_size if path.is_file() else 0
            if not dry_run:
                dvc_data_gc(odb, [HashInfo(odb.hash_name, v) for v in need], shallow=True)
    return removed, size, kept


def mlflow_collect(protected_runs: set[str], dry_run: bool) -> tuple[list[str], int]:
    """Runs already deleted in MLflow (lifecycle stage `deleted`) and their artifact bytes;
    unless dry_run, purge them with `mlflow gc` (its click command, called in-process). Runs
    behind a protected version are never purged."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = [r for r in client.search_runs(exps, run_view_type=ViewType.DELETED_ONLY)
            if r.info.run_id not in protected_runs] if exps else []
    size = sum(_folder_bytes(r.info.artifact_uri) for r in runs)
    ids = [r.info.run_id for r in runs]
    if ids and not dry_run:
        import mlflow
        from mlflow.cli import gc as mlflow_gc

        mlflow_gc.main(["--backend-store-uri", mlflow.get_tracking_uri(),
                        "--run-ids", ",".join(ids)], standalone_mode=False)
    return ids, size


def _folder_bytes(uri: str | None) -> int:
    """Bytes under a local artifact folder (file:// URI or plain path; 0 for other stores)."""
    from urllib.parse import unquote, urlparse

    if not uri or not (uri.startswith(("file:", "/"))):
        return 0
    folder = Path(unquote(urlparse(uri).path))
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


@contextlib.contextmanager
def holding_workspace(project: Project, by: str) -> Iterator[None]:
    """Hold the workspace lock (waiting run.lock_timeout_s for a live run) so no lifecycle run
    writes the DVC cache while gc removes from it; a dead holder found is recovered first."""
    lock = project.workspace_lock()
    stale = lock.acquire(flow_run_id=by)
    try:
        if stale:
            recover_crashed(project, stale, by)
        yield
    finally:
        lock.release()


def collect(project: Project, dry_run: bool = False, by: str = "gc") -> GcReport:
    """Storage retention for a project (see the module docstring); a real run holds the
    workspace lock (LockTimeout names a live run that held it too long)."""
    with contextlib.nullcontext() if dry_run else holding_workspace(project, by):
        return _collect(project, dry_run)


def _collect(project: Project, dry_run: bool) -> GcReport:
    """collect() without the lock."""
    from textloop.pipeline import tracking
    from textloop.pipeline.registry import ALIAS, mlflow_client, served_model

    tracking.setup(project)
    params = project.params()
    client = mlflow_client()
    keep = protected_versions(client, served_model(project)[0], (ALIAS, params.shadow.alias),
                              params.gc.keep_versions)
    report = GcReport(dry_run=dry_run, protected_versions={
        k: why for k, (_, why) in sorted(keep.items())})
    hashes = set().union(*(version_hashes(client, v) for v, _ in keep.values()))
    report.mlflow_runs, report.mlflow_bytes = mlflow_collect(
        {v.run_id for v, _ in keep.values()}, dry_run)
    report.dvc_objects, report.dvc_bytes, report.dvc_kept = dvc_collect(
        project.root, hashes, dry_run)
    log.info("gc%s: %d MLflow runs (%d bytes), %d DVC objects (%d bytes); kept versions %s",
             " (dry run)" if dry_run else "", len(report.mlflow_runs), report.mlflow_bytes,
             report.dvc_objects, report.dvc_bytes, sorted(keep))
    return report
