"""No-op rerun benchmark: `textloop run` in a project where nothing changed (every stage
skipped, nothing registered), timed as a user sees it (a fresh process, the CLI as installed).

Three kinds of rerun, in one go, so the figures are paired under the same load:
- `temporary`: `prefect.server_idle_minutes` 0 (a temporary Prefect server per run: the old way);
- `cold`: the project Prefect server is not running (stopped with `textloop down`): this run
  starts it (the first run's extra cost), and it stays up;
- `warm`: the project server is running and reused.
Each row: wall and CPU seconds (the run and its children, plus the project server's CPU during
the run), whether the server was reused (same pid before and after), the load average.
Usage: python benchmarks/noop_rerun.py [--project DIR] [--runs N] [--keep-server]
Without --project a new project is made with `textloop init` in benchmarks/out/noop_project and
run once first (the embedded corpus: minutes)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
TEXTLOOP = [sys.executable, "-m", "textloop"]
IDLE_ENV = "TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES"  # textloop.cli.prefect_server.IDLE_ENV
RECORD = Path(".textloop/run/prefect-server.json")  # <state>/run/prefect-server.json


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server(project: Path) -> tuple[int | None, float]:
    """The project server's pid (None: not running) and its CPU seconds so far."""
    try:
        rec = json.loads((project / RECORD).read_text())
        proc = psutil.Process(rec["pid"])
        times = proc.cpu_times()
        return rec["pid"], times.user + times.system
    except (FileNotFoundError, ValueError, KeyError, psutil.Error):
        return None, 0.0


def timed_run(project: Path, kind: str, env: dict[str, str]) -> dict:
    """One `textloop run --json` in the project; its wall and CPU seconds and what it did."""
    pid_before, server_cpu_before = server(project)
    cpu, load = children_cpu(), os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run([*TEXTLOOP, "run", "--json"], cwd=project, capture_output=True,
                          text=True, check=True, env=env)
    wall = time.perf_counter() - start
    run_cpu = children_cpu() - cpu
    pid_after, server_cpu_after = server(project)  # a temporary server is the run's child:
    server_cpu = server_cpu_after - (server_cpu_before if pid_after == pid_before else 0.0)
    record = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"kind": kind, "wall_s": round(wall, 2), "cpu_s": round(run_cpu + server_cpu, 2),
            "cpu_run_s": round(run_cpu, 2), "cpu_server_s": round(server_cpu, 2),
            "server_pid": pid_after, "server_reused": pid_before is not None
            and pid_before == pid_after, "load_1min_before": round(load[0], 2),
            "stages_run": record.get("stages_run"),
            "registered": record.get("deploy", {}).get("registered")}


def down(project: Path, env: dict[str, str]) -> None:
    """`textloop down`: stops the project server (and anything `up` started)."""
    subprocess.run([*TEXTLOOP, "down"], cwd=project, check=True, capture_output=True, env=env)


def summary(rows: list[dict]) -> dict:
    """Median and range of wall and CPU seconds per kind."""
    out = {}
    for kind in ("temporary", "cold", "warm"):
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            out[kind] = {k: {"median": round(statistics.median(r[k] for r in mine), 2),
                             "min": min(r[k] for r in mine), "max": max(r[k] for r in mine)}
                         for k in ("wall_s", "cpu_s")}
    return out


def main() -> int:
    """Make (or reuse) a project, then time the reruns: temporary, cold, warm."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=3, help="temporary and warm reruns each")
    ap.add_argument("--keep-server", action="store_true", help="leave the project server up")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", IDLE_ENV)}
    project = args.project
    if project is None:
        project = REPO / "benchmarks" / "out" / "noop_project"
        if project.exists():
            subprocess.run([*TEXTLOOP, "down"], cwd=project, capture_output=True, env=env,
                           check=False)  # a project left by an older run: stop its server
            shutil.rmtree(project)
        subprocess.run([*TEXTLOOP, "init", str(project)], check=True, env=env)
        subprocess.run([*TEXTLOOP, "run"], cwd=project, check=True, capture_output=True, env=env)
    project = project.resolve()
    down(project, env)  # the temporary reruns pay their own server; none other runs meanwhile
    rows = [timed_run(project, "temporary", {**env, IDLE_ENV: "0"}) for _ in range(args.runs)]
    rows.append(timed_run(project, "cold", env))
    rows += [timed_run(project, "warm", env) for _ in range(args.runs)]
    if not args.keep_server:
        down(project, env)
    sys.stdout.write(json.dumps({"project": str(project), "cpus": os.cpu_count(),
                                 "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                                 "summary": summary(rows), "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
