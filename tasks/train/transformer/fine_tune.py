"""Fine-tuning on transformers' `Trainer`: AdamW, warmup + linear decay, clipping, early stopping,
budgets, a resume point every N steps, the best epoch kept.

The `Trainer` does the work: its checkpoints (model, optimizer, scheduler, RNG states, trainer
state) are the resume points, `resume_from_checkpoint` restores them and skips the batches already
seen, `load_best_model_at_end` keeps the best epoch by validation macro F1, `EarlyStoppingCallback`
counts patience and `save_total_limit` prunes old checkpoints. What textloop adds are callbacks:
a time budget that carries its spent minutes across resumes, a save every `checkpoint_every`
steps between the per-epoch evaluations, and progress lines / metrics for the caller. Which
checkpoint folder may be resumed (same config and data) is decided by `resume_point`.

Needs torch, numpy, transformers and accelerate (the `Trainer`'s own dependency), as torch_model
does plus accelerate: the GPU benchmark imports it as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import ExportableState

from tasks.train.transformer.torch_model import accuracy_f1, collate

log = logging.getLogger(__name__)

OnMetric = Callable[[str, float, "int | None"], None]
FINGERPRINT_FILE = "fingerprint"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it is torn


@dataclass(frozen=True)
class LoopConfig:
    """The fine-tune settings (the fields of textloop's TransformerConfig, plus the seed)."""

    seed: int = 42
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: int = 2
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    patience: int = 2
    class_weights: bool = True
    max_steps: int | None = None
    max_minutes: float | None = None
    checkpoint_every: int = 200


@dataclass
class FitData:
    """Tokenized train/val sets with integer labels."""

    train_ids: Sequence[np.ndarray]
    train_y: np.ndarray
    val_ids: Sequence[np.ndarray]
    val_y: np.ndarray
    n_classes: int
    pad_id: int


@dataclass
class FitResult:
    """What a run consumed and reached: the caller's budget report and metrics."""

    step: int
    epochs: float
    samples: int
    minutes: float
    stopped_by: str
    resumed_from_step: int
    best_accuracy: float
    best_f1: float
    history: list = field(default_factory=list)


def fingerprint(parts: dict[str, Any]) -> str:
    """A stable hash of config + model kind + seed + data: which checkpoints may be resumed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def hash_texts(texts: Sequence[str], labels: Sequence[Any]) -> str:
    """Content hash of a labeled text set (order matters: it fixes the batches)."""
    h = hashlib.sha256()
    for text, label in zip(texts, labels):
        h.update(f"{text}\x00{label}\x01".encode())
    return h.hexdigest()


def set_seed(seed: int) -> None:
    """Seed every RNG that building a model touches (the Trainer seeds again for training)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# --- which checkpoint folder a run may resume ------------------------------------------------

def complete(checkpoint: Path) -> bool:
    """A checkpoint the Trainer finished writing (a kill mid-save leaves no readable state)."""
    try:
        json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def resume_point(folder: Path, run: str) -> Path | None:
    """The newest complete checkpoint of this exact run in `folder`, or None to start fresh.

    `folder` holds one run: its fingerprint file says which. A folder written for another
    config or data is emptied with a warning (never resumed); torn checkpoints are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    mark = folder / FINGERPRINT_FILE
    found = mark.read_text(encoding="utf-8").strip() if mark.exists() else None
    if found != run:
        if any(p.name != FINGERPRINT_FILE for p in folder.iterdir()):
            log.warning("ignoring checkpoint %s: it was written for another config/data "
                        "(fingerprint %s, want %s); it will be replaced", folder,
                        str(found)[:12], run[:12])
        shutil.rmtree(folder)
        folder.mkdir(parents=True)
    tmp = folder / f"{FINGERPRINT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(run, encoding="utf-8")
    os.replace(tmp, mark)
    points = sorted((p for p in folder.iterdir() if CHECKPOINT.match(p.name)),
                    key=lambda p: int(CHECKPOINT.match(p.name).group(1)))
    for torn in [p for p in points if not complete(p)]:
        shutil.rmtree(torn, ignore_errors=True)
    points = [p for p in points if p.exists()]
    return points[-1] if points else None


# --- data the Trainer reads --------------------------------------------------------------------

def epoch_order(lengths: np.ndarray, batch_size: int, seed: int) -> np.ndarray:
    """Row order of one epoch: consecutive runs of `batch_size` are batches of similar-length
    texts (less padding), the batches shuffled, the one short batch last; a pure function of
    the seed."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    return np.concatenate([full[i] for i in rng.permutation(len(full))] + short)


class TrainRows(torch.utils.data.Dataset):
    """Training rows in the current epoch's order. The dataloader calls `set_epoch` at each
    epoch (and on resume, before skipping the batches already seen), so read sequentially it
    gives the same batches in every process."""

    def __init__(self, ids: Sequence[np.ndarray], y: np.ndarray, batch_size: int, seed: int):
        self.ids, self.y, self.batch_size, self.seed = ids, y, batch_size, seed
        self.lengths = np.array([len(x) for x in ids])
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order = epoch_order(self.lengths, self.batch_size, self.seed + epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.order[i])
        return {"input_ids": self.ids[j], "labels": int(self.y[j])}


def rows(ids: Sequence[np.ndarray], y: np.ndarray) -> list[dict[str, Any]]:
    """Validation rows in their own order."""
    return [{"input_ids": x, "labels": int(t)} for x, t in zip(ids, y)]


def pad_batch(pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """The Trainer's collator: torch_model's padding (to the batch's longest text rounded up to
    8, with the mask), the one serving uses, plus the labels."""
    def run(batch: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = collate([r["input_ids"] for r in batch], np.arange(len(batch)), pad_id,
                            torch.device("cpu"))
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([r["labels"] for r in batch])}
    return run


class TrainerModule(nn.Module):
    """The classifier with the call the Trainer makes (named tensors in, logits out); the loss
    is `compute_loss_func`'s, class-weighted."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"logits": self.inner(input_ids, attention_mask)}


def class_weight_tensor(y: np.ndarray, n_classes: int, enabled: bool) -> torch.Tensor | None:
    """Inverse-frequency class weights (mean 1) so a minority class is not ignored."""
    if not enabled:
        return None
    counts = np.bincount(y, minlength=n_classes).clip(min=1)
    return torch.tensor(len(y) / (n_classes * counts), dtype=torch.float32)


# --- what textloop adds to the Trainer: callbacks ---------------------------------------------

class TimeBudget(TrainerCallback, ExportableState):
    """Stops training once `max_minutes` are spent, counting every resumed part of the run:
    the minutes spent ride in each checkpoint (the Trainer restores exportable callbacks)."""

    def __init__(self, max_minutes: float | None = None, spent_minutes: float = 0.0,
                 stopped: bool = False):
        self.max_minutes, self.spent_minutes, self.stopped = max_minutes, spent_minutes, stopped
        self.started: float | None = None

    def minutes(self) -> float:
        """Minutes spent so far, this process's included."""
        now = 0.0 if self.started is None else (time.monotonic() - self.started) / 60
        return self.spent_minutes + now

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.started = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.max_minutes is not None and self.minutes() >= self.max_minutes:
            self.stopped = control.should_training_stop = True

    def state(self) -> dict:
        return {"args": {"max_minutes": self.max_minutes, "spent_minutes": self.minutes(),
                         "stopped": self.stopped}, "attributes": {}}


class SaveEvery(TrainerCallback):
    """A resume point every `every` steps between the per-epoch checkpoints. Not on an epoch's
    last step or at a stop: the epoch-end save (after validation) writes that step, and one
    folder is never written twice."""

    def __init__(self, every: int, steps_per_epoch: int):
        self.every, self.steps_per_epoch = every, steps_per_epoch

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        step = state.global_step
        if (step % self.every == 0 and step % self.steps_per_epoch
                and step < state.max_steps and not control.should_training_stop):
            control.should_save = True


class Progress(TrainerCallback):
    """Progress lines through textloop's logging and each metric to the caller (MLflow's side
    is the caller's: the Trainer reports to nothing)."""

    def __init__(self, on_metric: OnMetric):
        self.on_metric = on_metric

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kw: Any) -> None:
        if logs and "loss" in logs:
            self.on_metric("train_loss", float(logs["loss"]), state.global_step)
            self.on_metric("lr", float(logs["learning_rate"]), state.global_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None,
                    **kw: Any) -> None:
        accuracy, f1 = metrics["eval_accuracy"], metrics["eval_f1_macro"]
        self.on_metric("val_accuracy", accuracy, state.global_step)
        self.on_metric("val_f1_macro", f1, state.global_step)
        log.info("step %d epoch %.2f: val accuracy %.4f macro F1 %.4f", state.global_step,
                 state.epoch or 0.0, accuracy, f1)


# --- the run -----------------------------------------------------------------------------------

def training_args(cfg: LoopConfig, folder: Path, device: torch.device,
                  planned_steps: int) -> TrainingArguments:
    """The Trainer's settings: cfg's optimiser and schedule, validation and a checkpoint each
    epoch, the best epoch (val macro F1) loaded at the end, rows read in TrainRows' order."""
    capped = cfg.max_steps is not None and cfg.max_steps < planned_steps
    return TrainingArguments(
        output_dir=str(folder), num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if capped else -1, learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio, max_grad_norm=cfg.grad_clip, lr_scheduler_type="linear",
        optim="adamw_torch", eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="f1_macro", greater_is_better=True,
        restore_callback_states_from_checkpoint=True, train_sampling_strategy="sequential",
        seed=cfg.seed, use_cpu=device.type == "cpu", bf16=device.type == "cuda",
        logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, remove_unused_columns=False,
        label_names=["labels"])


def build_trainer(model: nn.Module, data: FitData, cfg: LoopConfig, device: torch.device,
                  folder: Path, on_metric: OnMetric) -> Trainer:
    """The Trainer over `model` (a SequenceClassifier) with textloop's callbacks."""
    steps_per_epoch = math.ceil(len(data.train_ids) / cfg.batch_size)
    args = training_args(cfg, folder, device, cfg.epochs * steps_per_epoch)
    weight = class_weight_tensor(data.train_y, data.n_classes, cfg.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(args.device))

    def metrics(pred: Any) -> dict[str, float]:
        acc, f1 = accuracy_f1(pred.label_ids, pred.predictions.argmax(axis=1), data.n_classes)
        return {"accuracy": acc, "f1_macro": f1}

    trainer = Trainer(
        model=TrainerModule(model), args=args, data_collator=pad_batch(data.pad_id),
        train_dataset=TrainRows(data.train_ids, data.train_y, cfg.batch_size, cfg.seed),
        eval_dataset=rows(data.val_ids, data.val_y), compute_metrics=metrics,
        compute_loss_func=lambda out, y, **kw: loss_fn(out["logits"].float(), y),
        callbacks=[TimeBudget(cfg.max_minutes), EarlyStoppingCallback(cfg.patience),
                   SaveEvery(cfg.checkpoint_every, steps_per_epoch), Progress(on_metric)])
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout; Progress logs
    return trainer


def fit(model: nn.Module, data: FitData, cfg: LoopConfig, device: torch.device, folder: Path,
        resume: Path | None = None, on_metric: OnMetric | None = None) -> FitResult:
    """Train until epochs, early stopping or a budget ends it, from `resume` (a checkpoint of
    this run, see resume_point) when given; checkpoints go to `folder`. Leaves the best (by val
    macro F1) weights in `model`."""
    trainer = build_trainer(model, data, cfg, device, Path(folder),
                            on_metric or (lambda name, value, step: None))
    resumed_from = 0
    if resume is not None:
        resumed_from = json.loads((resume / STATE_FILE).read_text(encoding="utf-8"))["global_step"]
        log.info("resuming from %s at step %d", resume, resumed_from)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    model.to(device)
    return fit_result(trainer, cfg, len(data.train_ids), resumed_from)


def fit_result(trainer: Trainer, cfg: LoopConfig, n_train: int, resumed_from: int) -> FitResult:
    """The run's budget use, why it stopped and its best validation round, from the Trainer's
    state (restored callbacks included)."""
    state = trainer.state
    callbacks = {type(cb).__name__: cb for cb in trainer.callback_handler.callbacks}
    budget, early = callbacks["TimeBudget"], callbacks["EarlyStoppingCallback"]
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    step = state.global_step
    if cfg.max_steps is not None and step >= cfg.max_steps:
        stopped_by = "max_steps"
    elif budget.stopped:
        stopped_by = "max_minutes"
    elif early.early_stopping_patience_counter >= cfg.patience:
        stopped_by = "early_stopping"
    else:
        stopped_by = "epochs"
    history = [{"step": e["step"], "epoch": e["epoch"], "val_accuracy": e["eval_accuracy"],
                "val_f1_macro": e["eval_f1_macro"]}
               for e in state.log_history if "eval_f1_macro" in e]
    best = [h for h in history if h["step"] == state.best_global_step] or history[-1:]
    samples = step // steps_per_epoch * n_train + min(step % steps_per_epoch * cfg.batch_size,
                                                      n_train)
    return FitResult(step=step, epochs=step / steps_per_epoch, samples=samples,
                     minutes=budget.minutes(), stopped_by=stopped_by,
                     resumed_from_step=resumed_from,
                     best_accuracy=best[-1]["val_accuracy"] if best else float("nan"),
                     best_f1=best[-1]["val_f1_macro"] if best else float("nan"), history=history)
