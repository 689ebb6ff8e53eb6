"""evaluate: test-set metrics, per-class report and confusion matrix of a saved model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.model import TextClassifier
from textloop.core.progress import track
from textloop.core.splits import class_balance

log = logging.getLogger(__name__)
# texts per predict call when scoring the test set: the char n-gram counter slices each distinct
# word of a batch once, so big batches repeat far less work (IMDb test: 25k reviews in one
# batch, 11-12.7 s of CPU against 13.7-13.9 s in batches of 10k; no stacked matrix is built)
EVAL_BATCH = 25_000


def predict_batched(model: TextClassifier, texts: Sequence[str], batch_size: int = 2048,
                    progress: bool = False) -> np.ndarray:
    """Class probabilities in batches; `progress`: a bar on a terminal, else step lines."""
    from joblib import parallel_config

    chunks = range(0, len(texts), batch_size)
    steps = track(chunks, len(chunks), "predict") if progress else chunks
    with parallel_config(backend="threading", n_jobs=2):  # a FeatureUnion's blocks side by side
        out = [model.predict_proba(list(texts[i:i + batch_size])) for i in steps]
    return np.vstack(out) if out else np.zeros((0, len(model.classes_)))


def score(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """The headline metrics used by optimize, evaluate and the deploy gate: scikit-learn's
    accuracy_score and precision_recall_fscore_support(average="macro", zero_division=0), the
    same floats bit for bit (macro over the sorted labels found in either list; the same
    divisions and means), counted with numpy: the lifecycle flow's deploy gate scores without
    importing scikit-learn (~0.8 CPU-s). Raises ValueError on no rows, lists of different
    lengths, or numbers against strings, as scikit-learn does."""
    truth, pred = np.asarray(y_true), np.asarray(y_pred)
    if truth.ndim != 1 or truth.shape != pred.shape or not len(truth):
        raise ValueError(f"score: {truth.shape} true labels against {pred.shape} predicted "
                         "(one label per row, at least one row)")
    if len({_label_kind(truth), _label_kind(pred)}) > 1:
        raise ValueError(f"score: mix of label types ({truth.dtype} true, {pred.dtype} predicted)")
    labels, codes = np.unique(np.concatenate([truth, pred]), return_inverse=True)
    t, p, k = codes[:len(truth)], codes[len(truth):], len(labels)
    tp = np.bincount(t[t == p], minlength=k)
    true_sum, pred_sum = np.bincount(t, minlength=k), np.bincount(p, minlength=k)
    return {"accuracy": float(np.mean(truth == pred)),
            "precision_macro": float(np.mean(_ratio(tp, pred_sum))),
            "recall_macro": float(np.mean(_ratio(tp, true_sum))),
            "f1_macro": float(np.mean(_ratio(2.0 * tp, true_sum + pred_sum)))}


def _label_kind(labels: np.ndarray) -> str:
    """'number' or 'text': scikit-learn refuses to score one against the other."""
    return "number" if labels.dtype.kind in "biuf" else "text"


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per label in float64, 0 where den is 0 (zero_division=0)."""
    out = np.asarray(num, dtype=np.float64) / np.where(den == 0, 1, den).astype(np.float64)
    out[den == 0] = 0.0
    return out


def evaluate(model: TextClassifier, test: pd.DataFrame, progress: bool = False
             ) -> tuple[dict, pd.DataFrame]:
    """Score a model on the test rows; returns metrics and per-row predictions."""
    from sklearn.metrics import classification_report

    classes = [str(c) for c in model.classes_]
    unknown = sorted(set(test["label"].astype(str)) - set(classes))
    proba = predict_batched(model, test["text"].tolist(), EVAL_BATCH, progress=progress)
    pred = [classes[i] for i in proba.argmax(axis=1)]
    y = test["label"].astype(str).tolist()
    metrics = score(y, pred)
    labels = sorted(set(classes) | set(y))
    metrics["n_test"] = len(test)
    metrics["per_class"] = classification_report(y, pred, labels=labels, output_dict=True,
                                                  zero_division=0)
    metrics["labels_unseen_in_training"] = unknown
    preds = pd.DataFrame({"row_id": test["row_id"], "actual": y, "predicted": pred,
                          "confidence": proba.max(axis=1) if len(proba) else []})
    return metrics, preds


def headline(metrics: dict) -> dict[str, float | int | None]:
    """The few numbers `dvc metrics show` and `dvc exp show` list (metrics/metrics.json): test
    accuracy with its 95% CI, macro F1, calibration error and test rows; flat, so the table
    stays readable at 120 columns. The full report (CIs of every metric, per class, slices,
    calibration bins, behaviour) is evaluate's report beside it."""
    ci = (metrics.get("ci") or {}).get("accuracy") or {}
    return {"accuracy": metrics.get("accuracy"), "accuracy_low": ci.get("low"),
            "accuracy_high": ci.get("high"), "f1_macro": metrics.get("f1_macro"),
            "ece": metrics.get("ece"), "n_test": metrics.get("n_test")}


def per_class_records(report: dict) -> list[dict[str, Any]]:
    """scikit-learn's classification report as one record per class (DVC plots read a list of
    records): {class, precision, recall, f1, support}; the averages are left to the headline."""
    return [{"class": name, "precision": row["precision"], "recall": row["recall"],
             "f1": row["f1-score"], "support": int(row["support"])}
            for name, row in report.items()
            if isinstance(row, dict) and name not in ("macro avg", "weighted avg", "micro avg")]


def plot_confusion(preds: pd.DataFrame, path: Path, title: str) -> Path:
    """A confusion-matrix PNG (counts; rows actual, columns predicted) for MLflow and DVC plots,
    drawn by scikit-learn's ConfusionMatrixDisplay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = sorted(set(preds["actual"]) | set(preds["predicted"]))
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ConfusionMatrixDisplay.from_predictions(preds["actual"], preds["predicted"], labels=labels,
                                            ax=ax, cmap="Blues", colorbar=False, values_format="d",
                                            xticks_rotation="vertical" if len(labels) > 6
                                            else "horizontal")
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gate_metric(setting: str, train_labels: Sequence[str], min_class_share: float) -> str:
    """The metric optimize selects on and the deploy gate compares (`evaluate.gate_metric`):
    `auto` is f1_macro when the train labels are imbalanced (textloop.core.splits.class_balance with
    shard.min_class_share), else accuracy; an explicit metric is returned as is."""
    if setting != "auto":
        return setting
    counts = pd.Series(list(train_labels), dtype=object).astype(str).value_counts()
    balance = class_balance(counts.to_dict(), min_class_share)
    return "f1_macro" if balance["imbalanced"] else "accuracy"


def add_confidence_intervals(metrics: dict, preds: pd.DataFrame, samples: int,
                             seed: int) -> dict:
    """metrics + `ci` ({metric: {low, high}}, bootstrap 95%, seeded) for every headline metric,
    and the bootstrap size behind it. preds: evaluate's per-row frame (actual, predicted)."""
    from tasks.evaluate.stats import bootstrap_ci

    ci = bootstrap_ci(preds["actual"].tolist(), preds["predicted"].tolist(), samples, seed)
    return {**metrics, "ci": ci, "ci_level": 0.95, "bootstrap_samples": samples}


def add_calibration(metrics: dict, preds: pd.DataFrame, bins: int) -> dict:
    """metrics + `ece` (expected calibration error of the top-class confidence, in [0, 1]) and
    `calibration` (the reliability diagram's bins)."""
    from tasks.evaluate.stats import calibration

    cal = calibration(preds["confidence"].to_numpy(),
                      (preds["actual"] == preds["predicted"]).to_numpy(), bins)
    return {**metrics, "ece": cal["ece"], "calibration": cal["bins"]}


def plot_reliability(bins: list[dict], ece: float | None, path: Path) -> Path:
    """The reliability diagram PNG: accuracy per confidence bin against the diagonal (a
    calibrated model's bars touch it), with each bin's share of rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = [b for b in bins if b["rows"]]
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar([b["low"] for b in used], [b["accuracy"] for b in used], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class)", ylabel="accuracy",
           title=f"reliability (ECE {ece:.4f})" if ece is not None else "reliability")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
