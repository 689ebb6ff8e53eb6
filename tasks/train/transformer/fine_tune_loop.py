"""The fine-tuning loop: AdamW, warmup + linear decay, clipping, early stopping, budgets, resume.

Needs torch, numpy and transformers (the schedule), as torch_model does: the GPU benchmark
imports it as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from tasks.train.transformer.torch_model import (
    accuracy_f1,
    autocast,
    collate,
    epoch_batches,
    predict_proba_ids,
)

log = logging.getLogger(__name__)

OnMetric = Callable[[str, float, "int | None"], None]


@dataclass(frozen=True)
class LoopConfig:
    """The loop's knobs (the fields of textloop's TransformerConfig, plus the seed)."""

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
class LoopState:
    """Everything beyond weights/optimizer that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch_pos: int = 0  # batches done in the current epoch
    samples: int = 0
    minutes: float = 0.0
    best_f1: float = -1.0
    best_accuracy: float = float("nan")
    bad_evals: int = 0
    stopped_by: str | None = None
    resumed_from_step: int = 0
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


class CheckpointStore:
    """last.pt (resume point) and best.pt (best weights) in one folder, written atomically."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint
        self.last, self.best = self.folder / "last.pt", self.folder / "best.pt"

    def load(self) -> dict | None:
        """The last checkpoint if it belongs to this exact run; a foreign one is ignored."""
        for torn in self.folder.glob("*.tmp"):  # left by a kill during a write
            torn.unlink(missing_ok=True)
        if not self.last.exists():
            return None
        ckpt = torch.load(self.last, map_location="cpu", weights_only=True)
        if ckpt.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: it was written for another config/data "
                        "(fingerprint %s, want %s); it will be replaced", self.last,
                        str(ckpt.get("fingerprint"))[:12], self.fingerprint[:12])
            return None
        return ckpt

    def load_best(self) -> dict[str, torch.Tensor] | None:
        """The best weights of this exact run, if saved."""
        if not self.best.exists():
            return None
        ckpt = torch.load(self.best, map_location="cpu", weights_only=True)
        return ckpt["model"] if ckpt.get("fingerprint") == self.fingerprint else None

    def save(self, path: Path, payload: dict) -> None:
        """Write to a temporary file then rename: a kill never leaves a torn checkpoint."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save({**payload, "fingerprint": self.fingerprint}, tmp)
        os.replace(tmp, path)


def class_weight_tensor(y: np.ndarray, n_classes: int, enabled: bool) -> torch.Tensor | None:
    """Inverse-frequency class weights (mean 1) so a minority class is not ignored."""
    if not enabled:
        return None
    counts = np.bincount(y, minlength=n_classes).clip(min=1)
    return torch.tensor(len(y) / (n_classes * counts), dtype=torch.float32)


def make_optimizer(model: nn.Module, cfg: LoopConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases or LayerNorm)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(opt: torch.optim.Optimizer, total: int,
                   warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to lr over warmup_ratio of `total` steps, then linear decay to zero at
    `total` (transformers' schedule; its state_dict round-trips through checkpoints)."""
    return get_linear_schedule_with_warmup(opt, num_warmup_steps=int(total * warmup_ratio),
                                           num_training_steps=total)


def evaluate(model: nn.Module, data: FitData, cfg: LoopConfig,
             device: torch.device) -> tuple[float, float]:
    """Validation accuracy and macro F1."""
    proba = predict_proba_ids(model, data.val_ids, data.pad_id, cfg.eval_batch_size, device)
    return accuracy_f1(data.val_y, proba.argmax(axis=1), data.n_classes)


def budget_hit(state: LoopState, cfg: LoopConfig) -> str | None:
    """Which budget (if any) says stop now."""
    if cfg.max_steps is not None and state.step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_minutes is not None and state.minutes >= cfg.max_minutes:
        return "max_minutes"
    return None


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights (the best model so far)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(model: nn.Module, data: FitData, cfg: LoopConfig, device: torch.device,
        store: CheckpointStore | None = None, on_metric: OnMetric | None = None,
        extra: dict | None = None) -> LoopState:
    """Train until epochs, early stopping or a budget ends it; resume from `store` when it can.

    Leaves the best (by val macro F1) weights in `model`. `extra` (e.g. a trained tokenizer)
    rides along in every checkpoint; read it back with `resume_extra`.
    """
    on_metric = on_metric or (lambda name, value, step: None)
    steps_per_epoch = math.ceil(len(data.train_ids) / cfg.batch_size)
    model.to(device)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, min(cfg.max_steps or 1 << 62, cfg.epochs * steps_per_epoch),
                           cfg.warmup_ratio)
    weight = class_weight_tensor(data.train_y, data.n_classes, cfg.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    state, best = resume(store, model, opt, sched)
    lengths = np.array([len(x) for x in data.train_ids])
    clock = time.monotonic() - state.minutes * 60
    while state.stopped_by is None:
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed + state.epoch)
        for idx in batches[state.batch_pos:]:
            loss = train_step(model, opt, sched, loss_fn, data, idx, cfg.grad_clip, device)
            state.step, state.batch_pos = state.step + 1, state.batch_pos + 1
            state.samples += len(idx)
            state.minutes = (time.monotonic() - clock) / 60
            on_metric("train_loss", loss, state.step)
            on_metric("lr", sched.get_last_lr()[0], state.step)
            if budget_hit(state, cfg):
                break
            if store and state.step % cfg.checkpoint_every == 0:
                save_last(store, model, opt, sched, state, extra)
        if state.batch_pos == len(batches):
            state.epoch, state.batch_pos = state.epoch + 1, 0
        best = end_of_round(model, data, cfg, device, state, best, store, on_metric)
        state.minutes = (time.monotonic() - clock) / 60
        state.stopped_by = stop_reason(state, cfg)
        if store:
            save_last(store, model, opt, sched, state, extra)
    if best is not None:
        model.load_state_dict(best)
    return state


def train_step(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, loss_fn: nn.Module,
               data: FitData, idx: np.ndarray, grad_clip: float, device: torch.device) -> float:
    """One optimizer step on one padded batch; returns the loss."""
    model.train()
    ids, mask = collate(data.train_ids, idx, data.pad_id, device)
    y = torch.from_numpy(data.train_y[idx]).to(device)
    with autocast(device):
        loss = loss_fn(model(ids, mask).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss.item()


def end_of_round(model: nn.Module, data: FitData, cfg: LoopConfig, device: torch.device,
                 state: LoopState, best: dict | None, store: CheckpointStore | None,
                 on_metric: OnMetric) -> dict:
    """Validate after an epoch (or a budget stop); keep the best weights, count patience."""
    accuracy, f1 = evaluate(model, data, cfg, device)
    on_metric("val_accuracy", accuracy, state.step)
    on_metric("val_f1_macro", f1, state.step)
    state.history.append({"step": state.step, "epoch": state.epoch, "val_accuracy": accuracy,
                          "val_f1_macro": f1})
    log.info("step %d epoch %d: val accuracy %.4f macro F1 %.4f", state.step, state.epoch,
             accuracy, f1)
    if best is None or f1 > state.best_f1:
        state.best_f1, state.best_accuracy, state.bad_evals = f1, accuracy, 0
        best = snapshot(model)
        if store:
            store.save(store.best, {"model": best})
    else:
        state.bad_evals += 1
    return best


def stop_reason(state: LoopState, cfg: LoopConfig) -> str | None:
    """Why training ends after this validation round, or None to go on."""
    if reason := budget_hit(state, cfg):
        return reason
    if state.bad_evals >= cfg.patience:
        return "early_stopping"
    if state.epoch >= cfg.epochs:
        return "epochs"
    return None


def rng_state() -> dict[str, Any]:
    """Torch RNG states (dropout draws); batch order is a pure function of seed + epoch."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def save_last(store: CheckpointStore, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
              state: LoopState, extra: dict | None) -> None:
    """Checkpoint model, optimizer, scheduler, RNG and loop position."""
    store.save(store.last, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "rng": rng_state(),
                            "state": asdict(state), "extra": extra or {}})


def resume(store: CheckpointStore | None, model: nn.Module, opt: torch.optim.Optimizer,
           sched: Any) -> tuple[LoopState, dict | None]:
    """Restore the last checkpoint of this exact run, or start fresh."""
    ckpt = store.load() if store else None
    if ckpt is None:
        return LoopState(), None
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    state = LoopState(**ckpt["state"])
    state.resumed_from_step = state.step
    best = store.load_best() if state.best_f1 > -1 else None
    log.info("resumed from %s at step %d (epoch %d, batch %d)", store.last, state.step,
             state.epoch, state.batch_pos)
    return state, best


def resume_extra(store: CheckpointStore | None) -> dict:
    """What the last resumable checkpoint carried in `extra` (empty when none)."""
    ckpt = store.load() if store else None
    return dict(ckpt["extra"]) if ckpt else {}


def set_seed(seed: int) -> None:
    """Seed every RNG the loop touches."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)

