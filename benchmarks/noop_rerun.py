"""No-op rerun benchmark: `textloop run` in a project where nothing changed (every stage
skipped, nothing registered), timed as a user sees it (a fresh process, the CLI as installed).
Prints wall and CPU seconds per rerun and the load average.
Usage: python benchmarks/noop_rerun.py [--project DIR] [--runs N]
Without --project a new project is made with `textloop init` in benchmarks/out/noop_project and
run once first (the embedded corpus: minutes)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXTLOOP = [sys.executable, "-m", "textloop"]


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(project: Path) -> dict:
    """One `textloop run --json` in the project; its wall and CPU seconds and what it did."""
    cpu, load = children_cpu(), os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run([*TEXTLOOP, "run", "--json"], cwd=project, capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - start
    record = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"wall_s": round(wall, 2), "cpu_s": round(children_cpu() - cpu, 2),
            "load_1min_before": round(load[0], 2), "stages_run": record.get("stages_run"),
            "registered": record.get("deploy", {}).get("registered")}


def main() -> int:
    """Make (or reuse) a project, then time the reruns."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    project = args.project
    if project is None:
        project = REPO / "benchmarks" / "out" / "noop_project"
        if project.exists():
            shutil.rmtree(project)
        subprocess.run([*TEXTLOOP, "init", str(project)], check=True)
        subprocess.run([*TEXTLOOP, "run"], cwd=project, check=True, capture_output=True)
    runs = [timed_run(project.resolve()) for _ in range(args.runs)]
    sys.stdout.write(json.dumps({"project": str(project), "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
