"""Batch predict memory: `textloop predict` over N rows (default 1M) of CSV, TSV, JSONL and
Parquet, each scored with the project's champion into a file of the same format, as a user runs
it (a fresh process, the CLI as installed). Per format: input size, wall and CPU seconds and the
peak RSS of the process tree (sampled every 50 ms), written to
benchmarks/out/predict_memory_<format>.json.

The rows are review-like texts (about 300 characters, the size of the IMDb reviews a user
scores), a numeric column and a label column, written in blocks so the generator itself stays
small.

Usage: python benchmarks/predict_memory.py --project DIR [--rows 1000000] [--formats csv,tsv,jsonl,parquet]
DIR is a textloop project with a champion (`textloop run` once)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
WORDS = [
    "the", "film", "was", "good", "great", "awful", "dull", "plot", "acting", "story", "cast",
    "ending", "director", "script", "scenes", "really", "quite", "lovely", "boring", "terrible",
    "brilliant", "fun", "weak", "music", "camera",
]
BLOCK = 100_000


def write_input(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` review-like rows in the format of `path`'s suffix, written BLOCK rows at a time."""
    rng = np.random.default_rng(seed)
    fmt = path.suffix.lstrip(".")
    path.unlink(missing_ok=True)
    writer = None
    for start in range(0, rows, BLOCK):
        n = min(BLOCK, rows - start)
        words = rng.choice(WORDS, size=(n, 55))
        df = pd.DataFrame({"id": np.arange(start, start + n),
                           "text": [" ".join(w) for w in words],
                           "label": rng.choice(["pos", "neg", "neutral"], size=n)})
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        elif fmt == "jsonl":
            with open(path, "a", encoding="utf-8") as f:
                f.write(df.to_json(orient="records", lines=True))
        else:
            df.to_csv(path, mode="a", header=start == 0, index=False,
                      sep="\t" if fmt == "tsv" else ",")
    if writer is not None:
        writer.close()


def measure(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; wall seconds, CPU seconds of its tree and its peak RSS (sampled)."""
    start, kids0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        rss = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                rss += p.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, rss)
        time.sleep(0.05)  # the sampling period, not a synchronisation
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the reaped tree's CPU
    cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
    return {"wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(peak / 2**20), "summary": err.strip().splitlines()[-1:]}



def record(fmt: str, rows: int, input_mb: float, got: dict) -> dict:
    """One figure for benchmarks/results.py: the peak RSS, with how it was measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                            capture_output=True, check=False).stdout.strip()
    mem = psutil.virtual_memory().total / 2**30
    return {"figure": f"predict_memory_{fmt}",
            "what": f"`textloop predict` peak RSS, {rows:,} rows of {fmt} ({input_mb:.0f} MB) "
                    f"into {fmt}; {got['wall_s']} s wall",
            "unit": "MB", "value": got["peak_rss_mb"], "peer": None, "peer_value": None,
            "ratio": None, "better": "lower", "rows": rows, "input_mb": round(input_mb, 1),
            **got, "command": f"python benchmarks/predict_memory.py --project P --rows {rows} "
                              f"--formats {fmt}",
            "commit": commit, "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPU, {mem:.0f} GiB",
            "load": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--formats", default="csv,tsv,jsonl,parquet")
    args = ap.parse_args()
    work = args.project / ".textloop" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    for fmt in args.formats.split(","):
        src, dest = work / f"in.{fmt}", work / f"out.{fmt}"
        write_input(src, args.rows)
        cmd = [sys.executable, "-m", "textloop", "predict", str(src), "-o", str(dest)]
        rec = record(fmt, args.rows, src.stat().st_size / 2**20, measure(cmd, args.project))
        src.unlink()
        dest.unlink(missing_ok=True)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"predict_memory_{fmt}.json").write_text(json.dumps(rec, indent=2) + "\n")
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
