"""Lineage, reproduce and rollback on a small project.

A fresh project (git + DVC) on a stratified sample of the embedded corpus (`--rows`, default
900), trained with `textloop run` (the same small budgets as the e2e tests), then timed from the
command line as a user runs them: `textloop lineage 1 --json`, `textloop reproduce 1 --json`
(temporary git worktree, DVC cache, `dvc repro --force`, comparison) and a second run + rollback
(`textloop run --set train.tfidf.max_features=3000`, `textloop rollback`). Reports seconds per command, the
deploy step's seconds, and the reproduce verdict.

Usage: python benchmarks/lineage.py [--rows 900]
Writes benchmarks/out/lineage.json (the project stays in benchmarks/out/lineage_project).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"


def textloop(root: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """One CLI command in the project, timed (wall seconds)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO),  # a loaded machine: give the temporary Prefect server time
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    start = time.perf_counter()
    proc = subprocess.run([str(bin_dir / "textloop"), *args], cwd=root, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and args[0] != "reproduce"):
        raise SystemExit(f"textloop {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return round(time.perf_counter() - start, 2), proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=900)
    args = parser.parse_args()
    from tests.support.e2e_project import make_project, sample_csv

    root = OUT / "lineage_project"
    shutil.rmtree(root, ignore_errors=True)
    make_project(root, "sample.csv")
    sample_csv(root / "sample.csv", args.rows)
    out: dict[str, Any] = {"rows": args.rows, "load_before": os.getloadavg()}
    out["run_s"], _ = textloop(root, "run", "--label-col", "sentiment", "--json")
    last = json.loads((root / ".textloop/last_run.json").read_text())
    out["deploy_s"] = last["stage_seconds"].get("deploy")
    out["lineage_s"], proc = textloop(root, "lineage", "1", "--json")
    info = json.loads(proc.stdout)
    out["lineage_outputs"] = sum(len(s["outs"]) for s in info["dvc_lock"].values())
    out["reproduce_s"], proc = textloop(root, "reproduce", "1", "--json")
    report = json.loads(proc.stdout)
    out["reproduce"] = {k: report[k] for k in ("data_match", "metrics_match", "match")}
    out["reproduce_differs"] = [p for p, r in report["paths"].items() if not r["match"]]
    save(out)
    out["run2_s"], _ = textloop(root, "run", "--set", "deploy.max_regression=1.0",
                                "--set", "train.tfidf.max_features=3000", "--json")
    out["run2_deploy"] = json.loads((root / "metrics/deploy.json").read_text())["reason"]
    out["rollback_s"], proc = textloop(root, "rollback", "--reason", "benchmark", "--user", "bench")
    out["rollback"] = proc.stdout.strip()
    out["load_after"] = os.getloadavg()
    save(out)
    print(json.dumps(out, indent=2))


def save(out: dict[str, Any]) -> None:
    """Write what was measured so far (a later step failing keeps the earlier figures)."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "lineage.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
