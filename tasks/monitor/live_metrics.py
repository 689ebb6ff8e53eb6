"""monitor: live accuracy and drift of the served model against the training reference.

Plain functions over DataFrames (no Prefect, no database): flows/monitor_flow.py feeds them the
prediction log and the train shard, then stores and logs what they return.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from textloop.core.config import MonitorConfig

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W\d_]+")  # alphabetic runs in any script; digits and punctuation ignored


def tokens(text: str) -> list[str]:
    """Lowercased alphabetic tokens: the unit of the out-of-vocabulary rate."""
    return _WORD.findall(text.lower())


def build_vocab(texts: Iterable[str]) -> set[str]:
    """Every token seen in the reference texts."""
    vocab: set[str] = set()
    for text in texts:
        vocab.update(tokens(text))
    return vocab


def oov_rate(texts: Iterable[str], vocab: set[str]) -> float:
    """Share of tokens not in the vocabulary (nan when there are no tokens)."""
    total = missing = 0
    for text in texts:
        toks = tokens(text)
        total += len(toks)
        missing += sum(t not in vocab for t in toks)
    return missing / total if total else math.nan


def distribution(values: Iterable[str], classes: Sequence[str]) -> dict[str, float]:
    """Share of each class (classes missing from the values get 0)."""
    counts = Counter(map(str, values))
    n = sum(counts.values())
    return {c: (counts.get(c, 0) / n if n else 0.0) for c in classes}


def psi(expected: Mapping[str, float], actual: Mapping[str, float], eps: float = 1e-4) -> float:
    """Population stability index between two class mixes (> 0.2 is the usual alarm)."""
    keys = set(expected) | set(actual)
    e = np.array([max(expected.get(k, 0.0), eps) for k in keys])
    a = np.array([max(actual.get(k, 0.0), eps) for k in keys])
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class Reference:
    """What 'normal' looks like: the training vocabulary, lengths and class mix."""

    vocab: set[str]
    oov_rate: float
    lengths: np.ndarray
    label_dist: dict[str, float]
    n_rows: int
    classes: list[str] = field(default_factory=list)


def build_reference(train: pd.DataFrame, max_rows: int, seed: int = 0) -> Reference:
    """Vocabulary from 80% of the train shard; its OOV baseline measured on the other 20%."""
    df = train.sample(n=min(max_rows, len(train)), random_state=seed) if len(train) else train
    texts = df["text"].astype(str).tolist()
    cut = max(1, int(len(texts) * 0.8))
    vocab = build_vocab(texts[:cut])
    held_out = texts[cut:] or texts
    classes = sorted(df["label"].astype(str).unique())
    return Reference(vocab=vocab, oov_rate=oov_rate(held_out, vocab),
                     lengths=np.array([len(t) for t in texts]),
                     label_dist=distribution(df["label"], classes), n_rows=len(df),
                     classes=classes)


def live_accuracy(labeled: pd.DataFrame, min_feedback: int,
                  version: str | None = None) -> dict[str, Any]:
    """Accuracy on predictions that got a true label: of the served `version`, and per version."""
    n = len(labeled)
    correct = (labeled["label"].astype(str) == labeled["true_label"].astype(str)) if n else None
    versions = labeled["model_version"].astype(str) if n else None
    per_version = {v: float(c.mean()) for v, c in correct.groupby(versions)} if n else {}
    mine = correct[versions == str(version)] if n and version is not None else correct
    n_mine = 0 if mine is None else len(mine)
    acc = float(mine.mean()) if n_mine else None
    return {"version": version, "n_labeled": n_mine,
            "accuracy": acc if n_mine >= min_feedback else None, "accuracy_raw": acc,
            "n_labeled_all": n, "per_version": per_version}


def prediction_drift(current: pd.DataFrame, baseline: pd.DataFrame | None,
                     ref: Reference) -> dict[str, Any]:
    """Predicted class mix vs the training mix; confidence of the rows after the reference
    window vs the version's first predictions (None until there are such rows)."""
    classes = sorted(set(ref.classes) | set(current["label"].astype(str)))
    mix = distribution(current["label"], classes)
    conf = current["confidence"].astype(float).to_numpy()
    out: dict[str, Any] = {"class_mix": mix, "reference_mix": ref.label_dist,
                           "class_psi": psi(ref.label_dist, mix),
                           "confidence_mean": float(conf.mean()) if len(conf) else None,
                           "confidence_baseline_mean": None, "confidence_drop": None,
                           "confidence_ks_pvalue": None}
    conf = after_reference(current, baseline)["confidence"].astype(float).to_numpy()
    out["confidence_window_n"] = len(conf)
    if baseline is not None and len(baseline) and len(conf):
        base = baseline["confidence"].astype(float).to_numpy()
        out["confidence_baseline_mean"] = float(base.mean())
        out["confidence_drop"] = float(base.mean() - conf.mean())
        out["confidence_ks_pvalue"] = float(stats.ks_2samp(base, conf).pvalue)
    return out


def input_drift(texts: Sequence[str], ref: Reference) -> dict[str, Any]:
    """Length distribution (KS test) and out-of-vocabulary rate vs the train shard."""
    lengths = np.array([len(t) for t in texts])
    rate = oov_rate(texts, ref.vocab)
    ks = stats.ks_2samp(ref.lengths, lengths) if len(lengths) and len(ref.lengths) else None
    return {"length_mean": float(lengths.mean()) if len(lengths) else None,
            "reference_length_mean": float(ref.lengths.mean()) if len(ref.lengths) else None,
            "length_ks_stat": float(ks.statistic) if ks else None,
            "length_ks_pvalue": float(ks.pvalue) if ks else None,
            "oov_rate": None if math.isnan(rate) else rate,
            "reference_oov_rate": None if math.isnan(ref.oov_rate) else ref.oov_rate,
            "oov_increase": None if math.isnan(rate) or math.isnan(ref.oov_rate)
            else rate - ref.oov_rate}


def alerts(report: Mapping[str, Any], cfg: MonitorConfig, min_accuracy: float) -> list[str]:
    """The alarms a report raises, each a short sentence naming metric, value and threshold."""
    out: list[str] = []
    acc = report["accuracy"]["accuracy"]
    if acc is not None and acc < min_accuracy:
        out.append(f"live accuracy {acc:.3f} < {min_accuracy}")
    if report["n_predictions"] < cfg.min_rows:
        return out
    pred, inp = report["prediction_drift"], report["input_drift"]
    if pred["class_psi"] > cfg.max_class_psi:
        out.append(f"class mix PSI {pred['class_psi']:.3f} > {cfg.max_class_psi}")
    if (pred["confidence_drop"] or 0.0) > cfg.max_confidence_drop:
        out.append(f"mean confidence dropped {pred['confidence_drop']:.3f} "
                   f"> {cfg.max_confidence_drop}")
    if (inp["oov_increase"] or 0.0) > cfg.max_oov_increase:
        out.append(f"OOV rate up {inp['oov_increase']:.3f} > {cfg.max_oov_increase}")
    pval = inp["length_ks_pvalue"]
    if pval is not None and pval < cfg.min_length_pvalue:
        out.append(f"text length distribution changed (KS p={pval:.2g} < {cfg.min_length_pvalue})")
    return out


def after_reference(current: pd.DataFrame, baseline: pd.DataFrame | None) -> pd.DataFrame:
    """The current rows that are not part of the confidence reference window.

    The reference is the served version's first N predictions after promotion; comparing a
    window with itself would report a drop of 0.0 forever, so its rows are never "current"."""
    if baseline is None or not len(baseline) or not len(current):
        return current
    return current[~current["id"].isin(set(baseline["id"]))]


def reference_window(baseline: pd.DataFrame | None) -> dict[str, Any]:
    """Which predictions the confidence reference is (recorded in every report)."""
    if baseline is None or not len(baseline):
        return {"n": 0, "first_at": None, "last_at": None}
    return {"n": len(baseline), "first_at": str(baseline["created_at"].min()),
            "last_at": str(baseline["created_at"].max())}


def build_report(current: pd.DataFrame, baseline: pd.DataFrame | None, labeled: pd.DataFrame,
                 ref: Reference, cfg: MonitorConfig, min_accuracy: float) -> dict[str, Any]:
    """One monitoring verdict over the recent prediction window."""
    versions = {str(k): int(v) for k, v in current["model_version"].astype(str).value_counts().items()}
    served = str(current["model_version"].iloc[0]) if len(current) else None  # newest first
    mine = current[current["model_version"].astype(str) == served] if len(current) else current
    report: dict[str, Any] = {
        "n_predictions": len(current), "model_versions": versions,
        "window_start": str(current["created_at"].min()) if len(current) else None,
        "window_end": str(current["created_at"].max()) if len(current) else None,
        "reference_rows": ref.n_rows,
        "served_version": served,
        "confidence_reference": reference_window(baseline),
        "accuracy": live_accuracy(labeled, cfg.min_feedback, served),
        "prediction_drift": prediction_drift(mine, baseline, ref) if len(mine) else
        {"class_psi": 0.0, "confidence_drop": None},
        # texts not kept (serve.log_text false, purged by serve.retention_days) are not input
        "input_drift": input_drift(kept, ref) if (kept := _kept_texts(current))
        else {"oov_increase": None, "length_ks_pvalue": None},
    }
    report["alerts"] = alerts(report, cfg, min_accuracy)
    report["drift"] = any(not a.startswith("live accuracy") for a in report["alerts"])
    return report


def _kept_texts(current: pd.DataFrame) -> list[str]:
    """The logged texts that are still there (the log may keep only a hash)."""
    return current["text"].dropna().astype(str).tolist() if len(current) else []


def summary_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The numeric headline of a report (MLflow metrics, dashboard time series)."""
    pred, inp, acc = report["prediction_drift"], report["input_drift"], report["accuracy"]
    values = {"n_predictions": report["n_predictions"], "n_labeled": acc["n_labeled"],
              "live_accuracy": acc["accuracy"], "class_psi": pred.get("class_psi"),
              "confidence_mean": pred.get("confidence_mean"),
              "confidence_drop": pred.get("confidence_drop"), "oov_rate": inp.get("oov_rate"),
              "oov_increase": inp.get("oov_increase"),
              "length_ks_pvalue": inp.get("length_ks_pvalue"), "n_alerts": len(report["alerts"]),
              "embedding_auc": (report.get("embedding_drift") or {}).get("auc")}
    return {k: float(v) for k, v in values.items() if v is not None}


def write_report(report: Mapping[str, Any], current: pd.DataFrame, ref: Reference,
                 folder: Path) -> list[Path]:
    """report.json plus PNG plots (class mix, confidence, length) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return [path, *_plots(report, current, ref, folder)]


def _plots(report: Mapping[str, Any], current: pd.DataFrame, ref: Reference,
           folder: Path) -> list[Path]:
    """Three small figures; matplotlib's object API (no pyplot global state, thread-safe)."""
    from matplotlib.figure import Figure

    out = []
    pred = report["prediction_drift"]
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    classes = sorted(set(ref.label_dist) | set(pred.get("class_mix", {})))
    x = np.arange(len(classes))
    ax.bar(x - 0.2, [ref.label_dist.get(c, 0) for c in classes], 0.4, label="train")
    ax.bar(x + 0.2, [pred.get("class_mix", {}).get(c, 0) for c in classes], 0.4, label="served")
    ax.set_xticks(x, classes)
    ax.set_title(f"class mix (PSI {pred.get('class_psi', 0):.3f})")
    ax.legend()
    out.append(_save(fig, folder / "class_mix.png"))
    if len(current):
        out.append(_hist(current["confidence"].astype(float), None, "confidence",
                         folder / "confidence.png"))
        out.append(_hist(pd.Series([len(t) for t in _kept_texts(current)], dtype=float),
                         pd.Series(ref.lengths),
                         "text length (chars)", folder / "length.png"))
    return out


def _hist(values: pd.Series, reference: pd.Series | None, title: str, path: Path) -> Path:
    """A density histogram of served values, over the reference when there is one."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    if reference is not None and len(reference):
        ax.hist(reference, bins=30, density=True, alpha=0.5, label="train")
    ax.hist(values, bins=30, density=True, alpha=0.5, label="served")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    """Write a figure as PNG."""
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
