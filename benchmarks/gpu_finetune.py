"""Fine-tune all-MiniLM-L6-v2 on the full IMDb train set on one GPU; accuracy on all 25k test.

Target: >= 93.5% test accuracy within 10 minutes on one H200 (bf16 autocast, seq 512 head+tail).
Needs only torch, transformers, accelerate (the Trainer's), tokenizers/safetensors and numpy,
plus the files written by benchmarks/prepare_gpu_carry.py; it imports the trainer core from
tasks/train/transformer/torch_model.py + tasks/train/transformer/fine_tune.py (no textloop,
Prefect, MLflow or DVC).

Device run (project root, carry the prepared folder):
  python benchmarks/gpu_finetune.py --carry benchmarks/out/gpu_carry --out "$OUT"
CPU smoke test:
  python benchmarks/gpu_finetune.py --limit 64 --max-seq-len 64 --epochs 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.train.transformer.fine_tune import FitData, LoopConfig, fit, set_seed
from tasks.train.transformer.torch_model import (
    SequenceClassifier,
    accuracy_f1,
    load_pretrained_encoder,
    predict_proba_ids,
)

log = logging.getLogger("gpu_finetune")


def unpack(npz: np.lib.npyio.NpzFile, split: str, max_len: int) -> tuple[list, np.ndarray]:
    """Ragged id arrays of one split, re-cut head+tail if max_len is below the packed length."""
    flat, offsets = npz[f"{split}_ids"].astype(np.int64), npz[f"{split}_offsets"]
    ids = [flat[a:b] for a, b in itertools.pairwise(offsets)]
    body = max_len - 2
    head = body // 4
    ids = [x if len(x) <= max_len else
           np.concatenate([x[:1 + head], x[len(x) - 1 - (body - head):]]) for x in ids]
    return ids, npz[f"{split}_labels"].astype(np.int64)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--carry", type=Path, default=Path("benchmarks/out/gpu_carry"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/out")))
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup-ratio", type=float, default=0.06)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--val-size", type=int, default=1000, help="carved out of train")
    ap.add_argument("--max-minutes", type=float, default=8.5, help="training budget")
    ap.add_argument("--limit", type=int, default=None, help="rows per split (CPU smoke test)")
    ap.add_argument("--seed", type=int, default=42)
    return ap.parse_args()


def load_data(args: argparse.Namespace) -> tuple[FitData, list, np.ndarray]:
    """Train/val (val carved from train with the seed) and test, all pre-tokenized."""
    npz = np.load(args.carry / "imdb.npz")
    train_ids, train_y = unpack(npz, "train", args.max_seq_len)
    test_ids, test_y = unpack(npz, "test", args.max_seq_len)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train_ids))[:args.limit]
    test_keep = rng.permutation(len(test_ids))[:args.limit]
    n_val = min(args.val_size, len(order) // 4)
    val_idx, tr_idx = order[:n_val], order[n_val:]
    data = FitData([train_ids[i] for i in tr_idx], train_y[tr_idx],
                   [train_ids[i] for i in val_idx], train_y[val_idx], 2, 0)
    return data, [test_ids[i] for i in test_keep], test_y[test_keep]


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    data, test_ids, test_y = load_data(args)
    set_seed(args.seed)
    model = SequenceClassifier(load_pretrained_encoder(args.carry / "minilm", args.dropout), 2,
                               args.dropout)
    cfg = LoopConfig(seed=args.seed, batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
                     eval_batch_size=args.eval_batch_size, weight_decay=args.weight_decay,
                     warmup_ratio=args.warmup_ratio, patience=2, max_minutes=args.max_minutes,
                     checkpoint_every=1 << 30)  # a checkpoint per epoch only: no resume here
    log_every = lambda name, value, step: (
        log.info("step %d %s %.4f", step, name, value) if name != "lr" and step % 100 == 0 else None)
    with tempfile.TemporaryDirectory(prefix="gpu-finetune-") as folder:
        state = fit(model, data, cfg, device, Path(folder), on_metric=log_every)
    t_test = time.monotonic()
    proba = predict_proba_ids(model, test_ids, 0, args.eval_batch_size, device)
    accuracy, f1 = accuracy_f1(test_y, proba.argmax(axis=1), 2)
    result = {"test_accuracy": accuracy, "test_f1_macro": f1, "test_rows": len(test_y),
              "train_rows": len(data.train_ids), "val_rows": len(data.val_ids),
              "val_accuracy": state.best_accuracy, "val_f1_macro": state.best_f1,
              "steps": state.step, "samples_seen": state.samples, "epochs_done": round(state.epochs, 3),
              "train_minutes": round(state.minutes, 2), "stopped_by": state.stopped_by,
              "test_seconds": round(time.monotonic() - t_test, 1),
              "total_minutes": round((time.monotonic() - t0) / 60, 2), "history": state.history,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "settings": {k: str(v) for k, v in vars(args).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_finetune.json").write_text(json.dumps(result, indent=2))
    log.info("test accuracy %.4f macro F1 %.4f in %.1f min total", accuracy, f1,
             result["total_minutes"])


if __name__ == "__main__":
    main()
