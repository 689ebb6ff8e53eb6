"""train (minilm | scratch): fine-tune a transformer text classifier; load it; optimize it for CPU.

The model lives in torch_model, the fine-tuning on transformers' Trainer in fine_tune (neither
imports textloop); this module adds the textloop contract: Params, data frames, which checkpoint
folder a run may resume, and the model meta.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.clean.redact import model_meta
from tasks.train.transformer.fine_tune import (
    FitData,
    FitResult,
    LoopConfig,
    fingerprint,
    fit,
    hash_texts,
    resume_point,
    set_seed,
)
from tasks.train.transformer.torch_classifier import TorchTextClassifier, minilm_folder
from tasks.train.transformer.torch_model import (
    TOKENIZER_FILE,
    SequenceClassifier,
    TextSpec,
    accuracy_f1,
    encode,
    load_pretrained_encoder,
    load_tokenizer,
    magnitude_prune,
    quantize_int8,
    save_folder,
    scratch_encoder,
    set_quantize_flag,
    train_bpe,
)
from textloop.core.config import Params
from textloop.core.errors import UserError
from textloop.core.model import META_FILE, read_meta, write_meta

log = logging.getLogger(__name__)

PRUNE_AMOUNT = 0.3  # share of encoder Linear weights zeroed by magnitude pruning
MIN_SPEEDUP = 1.05  # a candidate must beat fp32 throughput by this factor (not noise)
OnMetric = Callable[[str, float, "int | None"], None]


def loop_config(params: Params) -> LoopConfig:
    """The loop's settings, taken from params.train.transformer and the seed."""
    cfg = params.train.transformer
    names = [f.name for f in dataclasses.fields(LoopConfig) if f.name != "seed"]
    return LoopConfig(seed=params.train.seed, **{n: getattr(cfg, n) for n in names})


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_fingerprint(train: pd.DataFrame, val: pd.DataFrame, params: Params) -> str:
    """Which checkpoints this run may resume: resolved config + model kind + seed + data."""
    return fingerprint({"config": params.train.transformer.model_dump(),
                        "kind": params.train.model, "seed": params.train.seed,
                        "train": hash_texts(train["text"].tolist(), train["label"].tolist()),
                        "val": hash_texts(val["text"].tolist(), val["label"].tolist())})


def subsample(train: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """At most `limit` training rows, drawn with the run's seed (the max_train_samples budget)."""
    if limit is None or len(train) <= limit:
        return train
    return train.sample(n=limit, random_state=seed).sort_index()


def build_model(params: Params, texts: Sequence[str], n_classes: int,
                saved_tokenizer: Path | None) -> tuple[SequenceClassifier, object]:
    """Pretrained MiniLM + its tokenizer, or a scratch encoder + a tokenizer trained on `texts`
    (or the one a resumed run trained: `saved_tokenizer`, so it keeps its exact vocabulary)."""
    cfg = params.train.transformer
    set_seed(params.train.seed)
    if params.train.model == "minilm":
        folder = minilm_folder()
        encoder = load_pretrained_encoder(folder, cfg.dropout)
        tok = load_tokenizer(folder / "tokenizer.json")
    else:
        if cfg.hidden_size % cfg.num_heads:
            raise UserError("train.transformer.hidden_size must be a multiple of num_heads")
        tok = (load_tokenizer(saved_tokenizer) if saved_tokenizer and saved_tokenizer.exists()
               else train_bpe(texts, cfg.vocab_size))
        encoder = scratch_encoder(tok.get_vocab_size(), tok.token_to_id("[PAD]"),
                                  cfg.hidden_size, cfg.num_layers, cfg.num_heads,
                                  cfg.max_seq_len, cfg.dropout)
    return SequenceClassifier(encoder, n_classes, cfg.dropout), tok


def train_transformer(train: pd.DataFrame, val: pd.DataFrame, params: Params, out_dir: Path,
                      on_metric: OnMetric | None = None,
                      checkpoint_dir: Path | None = None) -> dict[str, float]:
    """Fine-tune (minilm) or train (scratch), save a self-contained model folder, return metrics."""
    kind, cfg, seed = params.train.model, params.train.transformer, params.train.seed
    if kind not in ("minilm", "scratch"):
        raise ValueError(f"train_transformer cannot train train.model={kind!r}")
    if val.empty or train.empty:
        raise UserError("the transformer trainer needs non-empty train and val splits")
    classes = sorted(set(train["label"].astype(str)) | set(val["label"].astype(str)))
    folder = Path(checkpoint_dir or params.paths.checkpoints) / kind
    resume = resume_point(folder, run_fingerprint(train, val, params))
    train = subsample(train, cfg.max_train_samples, seed)
    device, threads = pick_device(), torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.num_threads)
    try:
        model, tok = build_model(params, train["text"].tolist(), len(classes),
                                 folder / TOKENIZER_FILE if resume else None)
        if kind == "scratch" and resume is None:  # what a resumed run rebuilds its model on
            tok.save(str(folder / TOKENIZER_FILE))
        spec = TextSpec(cfg.max_seq_len, cfg.truncation)
        data = fit_data(train, val, classes, tok, spec)
        state = fit(model, data, loop_config(params), device, folder, resume, on_metric)
    finally:
        torch.set_num_threads(threads)
    budget = budget_used(state, len(train), device)
    save_folder(model, tok, spec, Path(out_dir))
    write_meta(Path(out_dir), "torch", classes, {
        "train": params.train.model_dump(), "budget": budget,
        "clean": {"strip_html": params.clean.strip_html, "lowercase": params.clean.lowercase},
        **model_meta(params.clean.redact)})
    log.info("trained %s: val accuracy %.4f macro F1 %.4f (%s)", kind, state.best_accuracy,
             state.best_f1, budget)
    return {"accuracy": state.best_accuracy, "f1_macro": state.best_f1, **budget}


def fit_data(train: pd.DataFrame, val: pd.DataFrame, classes: list[str], tok: object,
             spec: TextSpec) -> FitData:
    """Tokenize both splits once and map labels to class indices."""
    index = {c: i for i, c in enumerate(classes)}
    to_y = lambda df: np.array([index[str(v)] for v in df["label"]], dtype=np.int64)
    return FitData(encode(tok, train["text"].tolist(), spec), to_y(train),
                   encode(tok, val["text"].tolist(), spec), to_y(val), len(classes),
                   tok.token_to_id("[PAD]"))


def budget_used(state: FitResult, n_train: int, device: torch.device) -> dict:
    """What the run actually consumed, and why it stopped."""
    return {"samples_seen": state.samples, "steps": state.step,
            "minutes": round(state.minutes, 3), "epochs": round(state.epochs, 3),
            "stopped_by": state.stopped_by, "resumed_from_step": state.resumed_from_step,
            "train_rows": n_train, "device": device.type}


# --- optimize ----------------------------------------------------------------------------------

def candidate_model(folder: Path, name: str) -> TorchTextClassifier:
    """fp32 as trained, dynamic int8 Linear layers, or magnitude-pruned weights; all on CPU."""
    clf = TorchTextClassifier(folder, torch.device("cpu"))
    if name == "int8":
        clf.predictor.model = quantize_int8(clf.predictor.model)
    elif name == "pruned":
        clf.predictor.model = magnitude_prune(clf.predictor.model, PRUNE_AMOUNT).eval()
    return clf


def measure(clf: TorchTextClassifier, val: pd.DataFrame) -> dict:
    """Val accuracy / macro F1, batched throughput and single-text latency, on CPU."""
    texts, labels = val["text"].tolist(), val["label"].astype(str).tolist()
    start = time.perf_counter()
    proba = clf.predictor.predict_proba(texts)
    seconds = time.perf_counter() - start
    index = {c: i for i, c in enumerate(clf.classes_)}
    y = np.array([index.get(v, -1) for v in labels])
    accuracy, f1 = accuracy_f1(y, proba.argmax(axis=1), len(clf.classes_))
    single = []
    for text in texts[:16]:
        t0 = time.perf_counter()
        clf.predictor.predict_proba([text])
        single.append((time.perf_counter() - t0) * 1000)
    return {"accuracy": accuracy, "f1_macro": f1, "docs_per_s": len(texts) / seconds,
            "ms_per_doc_single": float(np.median(single))}


def optimize_transformer(train: pd.DataFrame, val: pd.DataFrame, params: Params,
                         train_model_dir: Path, out_dir: Path,
                         on_trial: Callable[[int, dict, dict], None] | None = None) -> dict:
    """Try int8 (and pruning if asked) for CPU serving; keep one only if val accuracy holds."""
    opt = params.optimize
    names = ["fp32"] + ["int8"] * opt.quantize + ["pruned"] * opt.prune
    threads = torch.get_num_threads()
    torch.set_num_threads(params.train.transformer.num_threads)
    trials = []
    try:
        for i, name in enumerate(names):
            result = measure(candidate_model(Path(train_model_dir), name), val)
            trials.append({"candidate": name, **result})
            if on_trial:
                on_trial(i, {"candidate": name}, result)
    finally:
        torch.set_num_threads(threads)
    chosen, decision = decide(trials, opt.max_accuracy_drop)
    save_candidate(Path(train_model_dir), Path(out_dir), chosen, decision)
    return {"kind": "torch", "device": "cpu", "val_rows": len(val), "trials": trials,
            "max_accuracy_drop": opt.max_accuracy_drop, "chosen": chosen, "decision": decision,
            "accuracy": next(t["accuracy"] for t in trials if t["candidate"] == chosen)}


def decide(trials: list[dict], max_drop: float) -> tuple[str, str]:
    """The fastest candidate within max_drop of fp32's val accuracy and clearly faster, and why."""
    base = trials[0]

    def verdict(t: dict) -> str:
        if base["accuracy"] - t["accuracy"] > max_drop + 1e-12:
            return f"rejected: accuracy drop > {max_drop}"
        if t["docs_per_s"] < MIN_SPEEDUP * base["docs_per_s"]:
            return f"rejected: not >= {MIN_SPEEDUP}x faster"
        return "eligible"

    ok = [base] + [t for t in trials[1:] if verdict(t) == "eligible"]
    best = max(ok, key=lambda t: t["docs_per_s"])
    notes = [f"{t['candidate']}: val accuracy {t['accuracy']:.4f} "
             f"({t['accuracy'] - base['accuracy']:+.4f} vs fp32), "
             f"{t['docs_per_s'] / base['docs_per_s']:.2f}x fp32 docs/s, {verdict(t)}"
             for t in trials[1:]]
    return best["candidate"], f"kept {best['candidate']}; " + "; ".join(notes or ["fp32 only"])


def save_candidate(src: Path, dst: Path, chosen: str, decision: str) -> None:
    """Write the chosen model folder (int8 = fp32 weights + quantize-on-load flag)."""
    if dst.exists():
        shutil.rmtree(dst)
    if chosen == "pruned":
        pred = candidate_model(src, "pruned").predictor
        save_folder(pred.model, pred.tok, pred.spec, dst)
        shutil.copy2(src / META_FILE, dst / META_FILE)
    else:
        shutil.copytree(src, dst)
        set_quantize_flag(dst, "dynamic_int8" if chosen == "int8" else None)
    meta = read_meta(dst)
    extra = {k: v for k, v in meta.items() if k not in ("kind", "classes")}
    write_meta(dst, "torch", meta["classes"], {**extra,
               "optimize": {"chosen": chosen, "decision": decision}})
