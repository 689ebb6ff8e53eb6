"""CPU benchmark of the torch trainer: (a) a time-budgeted MiniLM fine-tune on IMDb train,
evaluated on IMDb test; (b) dynamic int8 vs fp32: docs/s both ways and the accuracy delta.

Run from the project root (CPU is slow: use --test-limit to subsample the 25k test reviews):
  python benchmarks/transformer_cpu.py --max-minutes 10 --test-limit 2000
Writes benchmarks/out/transformer_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.train.transformer.torch_model import accuracy_f1
from tasks.train.transformer.trainer import candidate_model, train_transformer
from textloop.core.config import Params
from textloop.core.text import normalize_text

log = logging.getLogger("transformer_cpu")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imdb", type=Path, default=Path("/work/shared/data/imdb"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--max-train-samples", type=int, default=2000,
                    help="size the lr schedule to what the budget can see (None: all)")
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--val-size", type=int, default=200, help="carved out of train")
    ap.add_argument("--test-limit", type=int, default=2000, help="stratified test subsample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-train", action="store_true", help="reuse <out>/cpu_model")
    return ap.parse_args()


def load_imdb(path: Path, split: str) -> pd.DataFrame:
    """IMDb reviews normalized exactly as the pipeline's clean stage does."""
    df = pd.read_parquet(path / f"{split}.parquet", columns=["text", "label"])
    return df.assign(text=[normalize_text(t) for t in df["text"]])


def stratified(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """n rows with the class balance of df (all rows if n is None or too large)."""
    if n is None or n >= len(df):
        return df
    return df.groupby("label", group_keys=False).sample(frac=n / len(df), random_state=seed)


def bench_params(args: argparse.Namespace) -> Params:
    return Params.model_validate({"train": {"model": "minilm", "seed": args.seed, "transformer": {
        "max_seq_len": args.max_seq_len, "batch_size": args.batch_size, "lr": args.lr,
        "epochs": args.epochs, "max_minutes": args.max_minutes, "num_threads": args.threads,
        "max_train_samples": args.max_train_samples, "checkpoint_every": 50}}})


def train(args: argparse.Namespace, model_dir: Path) -> dict:
    """(a) the budgeted fine-tune; val is carved out of train, never from test."""
    data = load_imdb(args.imdb, "train").sample(frac=1.0, random_state=args.seed)
    val, tr = data.iloc[:args.val_size], data.iloc[args.val_size:]
    every = lambda name, value, step: (
        log.info("step %s %s %.4f", step, name, value) if name != "lr" and step % 10 == 0 else None)
    return train_transformer(tr, val, bench_params(args), model_dir, on_metric=every,
                             checkpoint_dir=args.out / "cpu_checkpoints")


def compare_int8(model_dir: Path, test: pd.DataFrame, chunk: int = 200) -> dict:
    """(b) fp32 vs int8 on the same texts, alternating chunks so CPU-load drift hits both."""
    models = {name: candidate_model(model_dir, name) for name in ("fp32", "int8")}
    texts = test["text"].tolist()
    proba = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    for start in range(0, len(texts), chunk):
        for name, clf in models.items():
            t0 = time.perf_counter()
            proba[name].append(clf.predictor.predict_proba(texts[start:start + chunk]))
            seconds[name] += time.perf_counter() - t0
        log.info("inference %d/%d docs", min(start + chunk, len(texts)), len(texts))
    classes = models["fp32"].classes_
    y = np.array([classes.index(v) for v in test["label"]])
    out = {}
    for name in models:
        acc, f1 = accuracy_f1(y, np.concatenate(proba[name]).argmax(axis=1), len(classes))
        out[name] = {"accuracy": acc, "f1_macro": f1, "docs_per_s": len(texts) / seconds[name]}
    out["speedup"] = out["int8"]["docs_per_s"] / out["fp32"]["docs_per_s"]
    out["accuracy_delta_points"] = 100 * (out["int8"]["accuracy"] - out["fp32"]["accuracy"])
    return out


def main() -> None:
    args = parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model_dir = args.out / "cpu_model"
    result: dict = {"settings": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_train:
        result["train"] = train(args, model_dir)
    torch.set_num_threads(args.threads)
    test = stratified(load_imdb(args.imdb, "test"), args.test_limit, args.seed)
    result["test_rows"] = len(test)
    result["inference"] = compare_int8(model_dir, test)
    result["test_accuracy"] = result["inference"]["fp32"]["accuracy"]
    result["test_f1_macro"] = result["inference"]["fp32"]["f1_macro"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transformer_cpu.json").write_text(json.dumps(result, indent=2, default=str))
    log.info("result: %s", json.dumps({k: v for k, v in result.items() if k != "settings"},
                                      default=str))


if __name__ == "__main__":
    main()
