"""Lineage in one record: which code, data, params and run made a registered version.

At deploy time `build_record` gathers what is only true then (git commit, Prefect flow run, every
dvc.lock hash, params.yaml and dvc.lock as text, the data sources and their fingerprints, the test
metrics) and deploy logs it as the run artifact `lineage/lineage.json`. `lineage()` answers later
from that artifact, the version's tags (gate decision) and the alias history, so nothing depends
on the workspace as it is now. `compare()` is the rule `textloop reproduce` reports with."""

from __future__ import annotations

import json
import logging
import math
import subprocess
from pathlib import Path
from typing import Any

from textloop.core.errors import UserError
from textloop.core.files import parse_yaml_text
from textloop.core.layout import Project
from textloop.pipeline import registry

log = logging.getLogger(__name__)

ARTIFACT = "lineage/lineage.json"  # run artifact written at deploy time
SCHEMA = 1


def dvc_lock_hashes(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """dvc.lock as {stage: {"deps": {path: md5}, "outs": {path: md5}}} (md5 or other hash)."""
    stages = (parse_yaml_text(text, "dvc.lock").get("stages") or {}) if text else {}

    def digest(entry: dict[str, Any]) -> str:
        return str(entry.get("md5") or entry.get("hash") or entry.get("etag") or "")

    return {name: {kind: {e["path"]: digest(e) for e in stage.get(kind, [])}
                   for kind in ("deps", "outs")} for name, stage in stages.items()}


def git_state(root: Path) -> tuple[str, bool]:
    """(HEAD commit or 'none', whether tracked files differ from it: a dirty tree cannot be
    rebuilt exactly from the commit; params.yaml and dvc.lock are recorded in full anyway)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "none", False
    changed = git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    settings = ("params.yaml", "textloop.yaml", "dvc.lock")  # settings and DVC's record, not code
    code = [ln for ln in changed if ln[3:].strip() not in settings]
    return head.stdout.strip(), bool(code)


def _read(path: Path) -> str:
    """A text file's content, empty when it is absent."""
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def build_record(project: Project, run_id: str, name: str, version: str,
                 extra_tags: dict[str, str]) -> dict[str, Any]:
    """Everything lineage needs later, read from the workspace at deploy time."""
    import textloop

    p = project.params()
    commit, dirty = git_state(project.root)
    lock_text = _read(project.root / "dvc.lock")
    sources = _read(project.path(p.paths.sources))
    metrics = _read(project.path(p.paths.eval_metrics))
    return {
        "schema": SCHEMA, "model_name": name, "version": str(version), "mlflow_run_id": run_id,
        "git_commit": extra_tags.get("git_commit") or commit, "git_dirty": dirty,
        "prefect_flow_run_id": extra_tags.get("prefect.flow_run_id", "none"),
        "textloop_version": getattr(textloop, "__version__", "unknown"),
        "dvc_lock": dvc_lock_hashes(lock_text), "dvc_lock_text": lock_text,
        "params_yaml": _read(project.params_path), "params": p.model_dump(mode="json"),
        "sources": json.loads(sources) if sources else {},
        "metrics": {k: v for k, v in json.loads(metrics).items() if k != "per_class"}
        if metrics else {},
    }


def resolve_version(project: Project, ref: str | None) -> tuple[str, Any]:
    """(model name, ModelVersion) for a version number, an MLflow run id, or None (the
    champion). Raises UserError naming what was not found."""
    name, _ = registry.served_model(project)
    if ref is None:
        champ = registry.current_champion(registry.mlflow_client(), name)
        if champ is None:
            raise UserError(f"{name} has no champion; name a version or a run id")
        return name, champ
    if ref.isdigit():
        return name, registry.get_version(name, ref)
    found = registry.versions_of_run(name, ref)
    if not found:
        raise UserError(f"{ref!r}: neither a version of {name} nor a run that registered one")
    return name, max(found, key=lambda v: int(v.version))


def lineage(project: Project, ref: str | None) -> dict[str, Any]:
    """The one lineage record of a version: the deploy-time record (code, data, params, flow
    run), the MLflow run, the version's tags and gate decision, and the alias history (moves
    that touched this version, then the model's whole history)."""
    from textloop.pipeline import tracking

    tracking.setup(project)
    name, mv = resolve_version(project, ref)
    text = registry.run_text(mv.run_id, ARTIFACT)
    record = json.loads(text) if text else {}
    tags = dict(mv.tags or {})
    history = [m.to_dict() for m in registry.alias_history(name)]
    version = str(mv.version)
    return {
        "model_name": name, "version": version, "mlflow_run_id": mv.run_id,
        "aliases": list(getattr(mv, "aliases", []) or []),
        "recorded": bool(record),
        "git_commit": record.get("git_commit") or tags.get("git_commit", "unknown"),
        "git_dirty": record.get("git_dirty"),
        "prefect_flow_run_id": record.get("prefect_flow_run_id")
        or tags.get("prefect.flow_run_id", "unknown"),
        "dvc_lock": record.get("dvc_lock", {}), "params": record.get("params", {}),
        "sources": record.get("sources", {}), "metrics": record.get("metrics", {}),
        "gate": {k.removeprefix("gate."): v for k, v in tags.items() if k.startswith("gate.")},
        "tags": {k: v for k, v in tags.items() if k != "alias_history"},
        "alias_history": [m for m in history if version in (m["from_version"], m["to_version"])],
        "model_alias_history": history,
    }


def out_hashes(dvc_lock: dict[str, dict[str, dict[str, str]]]) -> dict[str, str]:
    """Every output path -> hash of a dvc_lock_hashes() answer."""
    return {path: h for stage in dvc_lock.values() for path, h in stage.get("outs", {}).items()}


def compare(recorded: dict[str, Any], rebuilt: dict[str, Any], data_paths: list[str],
            tolerance: float = 0.0) -> dict[str, Any]:
    """Did a rebuild reproduce a version? `recorded`/`rebuilt`: {"dvc_lock": ..., "metrics":
    {...}}. Data matches when every output under `data_paths` has the same hash; metrics match
    when every numeric test metric recorded is equal within `tolerance` (0: exact, what the
    seeded baseline gives). Returns per-path and per-metric verdicts plus `data_match`,
    `metrics_match` and `match`."""
    old, new = out_hashes(recorded.get("dvc_lock", {})), out_hashes(rebuilt.get("dvc_lock", {}))
    paths = {}
    for path in sorted(set(old) | set(new)):
        paths[path] = {"recorded": old.get(path), "rebuilt": new.get(path),
                       "match": old.get(path) == new.get(path) and path in old,
                       "data": any(path == d or path.startswith(d.rstrip("/") + "/")
                                   for d in data_paths)}
    metrics = {}
    for key, value in recorded.get("metrics", {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            got = rebuilt.get("metrics", {}).get(key)
            ok = isinstance(got, (int, float)) and math.isclose(value, got, rel_tol=0.0,
                                                                abs_tol=tolerance)
            metrics[key] = {"recorded": value, "rebuilt": got, "match": ok}
    data_ok = all(v["match"] for v in paths.values() if v["data"]) and any(
        v["data"] for v in paths.values())
    metrics_ok = bool(metrics) and all(v["match"] for v in metrics.values())
    return {"paths": paths, "metrics": metrics, "data_match": data_ok,
            "metrics_match": metrics_ok, "match": data_ok and metrics_ok}


def render(info: dict[str, Any]) -> str:
    """The lineage record as text for the terminal."""
    lines = [(f"{info['model_name']} v{info['version']}  aliases: "
             f"{', '.join(info['aliases']) or 'none'}"),
             f"  git commit      {info['git_commit']}"
             + ("  (tracked files were modified)" if info.get("git_dirty") else ""),
             f"  Prefect run     {info['prefect_flow_run_id']}",
             f"  MLflow run      {info['mlflow_run_id']}",
             f"  gate            {info['gate'].get('reason', 'n/a')}"]
    if not info["recorded"]:
        lines.append("  (no lineage artifact: registered before lineage was recorded)")
    for path, src in sorted(_source_lines(info["sources"]).items()):
        lines.append(f"  source {path}: {src}")
    lines.append("  dvc.lock outputs:")
    lines += [f"    {h or '-':<36} {path}" for path, h in sorted(out_hashes(info["dvc_lock"]).items())]
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(info["metrics"].items())
                        if isinstance(v, float))
    lines.append(f"  test metrics    {metrics or 'n/a'}")
    lines.append("  alias history:")
    from textloop.pipeline.history import AliasMove

    lines += [f"    {AliasMove.from_dict(m).line()}" for m in info["alias_history"]] or ["    none"]
    return "\n".join(lines)


SOURCE_FIELDS = ("source", "version", "digest", "path")  # sources.json's fields, in reading order


def _source_lines(sources: dict[str, Any]) -> dict[str, str]:
    """Each fingerprinted source as one line of `field value` pairs, never cut (a digest or a
    path is useless in part): the known fields of sources.json first, any other after them; a
    value that is not a mapping is shown as it is."""
    out = {}
    for key, value in sources.items():
        if not isinstance(value, dict):
            out[str(key)] = str(value)
            continue
        order = [f for f in SOURCE_FIELDS if f in value] + sorted(set(value) - set(SOURCE_FIELDS))
        out[str(key)] = "  ".join(f"{f} {_plain(value[f])}" for f in order)
    return out


def _plain(value: Any) -> str:
    """A field value for the terminal: text as is, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
