"""IMDb benchmark: the real lifecycle flow on ../shared/data/imdb (train.parquet as data,
test.parquet as the explicit test set). Prints test accuracy, macro F1, wall time per stage,
peak RSS. Usage: python benchmarks/imdb.py [--model tfidf|minilm|scratch] [--max-minutes M]
[--set KEY=VALUE ...] [--imdb DIR] [--out DIR]"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _paths import default_imdb


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "imdb_project")
    ap.add_argument("--model", default="tfidf", choices=["tfidf", "minilm", "scratch"])
    ap.add_argument("--max-minutes", type=float, default=None, help="transformer training budget")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE")
    return ap.parse_args()


def overrides(args: argparse.Namespace) -> dict:
    """params.yaml edits for this benchmark."""
    from textloop.core.config import parse_value

    out = {"ingest.source": str((args.imdb / "train.parquet").resolve()),
           "ingest.test_source": str((args.imdb / "test.parquet").resolve()),
           "ingest.label_col": "label", "ingest.id_col": "path", "train.model": args.model}
    if args.max_minutes is not None:
        out["train.transformer.max_minutes"] = args.max_minutes
    for item in args.sets:
        key, _, value = item.partition("=")
        out[key] = parse_value(value)
    return out


def optimize_summary(path: Path) -> dict:
    """What optimize chose, whether it reused train's features, and what its trials cost."""
    rep = json.loads(path.read_text())
    keys = ("chosen", "reused_train_features", "n_trials", "screen_rows", "baseline_val_score",
            "best_val_score", "best_params", "seconds")
    return {k: rep.get(k) for k in keys} | {
        "trial_seconds": [t.get("seconds") for t in rep.get("trials", [])],
        "finalists": [{k: f.get(k) for k in ("number", "accuracy", "f1_macro", "seconds",
                                             "reused_train_model")}
                      for f in rep.get("finalists", [])]}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (stages, servers):
    the work done, which a loaded machine stretches far less than the wall time."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    """Run the flow in a fresh project folder; print and save the figures."""
    args = parse_args()
    args.out = args.out.resolve()  # the flow runs from inside the project: no relative paths
    from textloop.cli.scaffold import init_project
    from textloop.core.layout import Project, configure

    if args.out.exists():
        shutil.rmtree(args.out)
    project = Project(init_project(REPO, args.out, overrides(args)))
    configure(project)
    import os

    os.chdir(project.root)
    from textloop.cli import prefect_server

    server = prefect_server.start_early()  # as `textloop run`: boots while the flow imports
    from flows.lifecycle import lifecycle

    prefect_server.use(server)
    load_before = os.getloadavg()  # the machine is shared: the load says how much CPU we had
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    record = lifecycle()
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_before
    load_after = os.getloadavg()
    metrics = json.loads((project.root / "metrics" / "metrics.json").read_text())
    result = {
        "model": args.model, "test_accuracy": round(metrics["accuracy"], 4),
        "test_f1_macro": round(metrics["f1_macro"], 4), "n_test": metrics["n_test"],
        "wall_seconds_total": round(wall, 1), "cpu_seconds_total": round(cpu, 1),
        "stage_seconds": record.get("stage_seconds"),
        "stage_cpu_seconds": record.get("stage_cpu_seconds"),  # the stage process + DVC's work
        "peak_rss_mb_stages": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "peak_rss_mb_flow": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
        "load_avg_1_5_15_after": [round(x, 2) for x in load_after],
        "deploy": record.get("deploy", {}).get("reason"),
        "train": json.loads((project.root / "metrics" / "train.json").read_text()),
        "optimize": optimize_summary(project.root / "metrics" / "optimize.json"),
    }
    out = REPO / "benchmarks" / "out" / f"imdb_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
