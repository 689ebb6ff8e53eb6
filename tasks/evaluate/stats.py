"""Error bars: confidence intervals of the headline metrics (accuracy: Wilson's score interval;
the macro metrics: bootstrap; alone and paired between two models on the same rows), McNemar's
exact test, expected calibration error. Pure numpy/scipy; a bootstrap resample is drawn as counts
per (true, predicted) cell, so its cost does not grow with the rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
LEVEL = 0.95  # every interval is a two-sided 95% percentile interval


def encode(*label_lists: Sequence[str]) -> tuple[list[np.ndarray], int]:
    """Integer codes of aligned label lists over their union of labels; returns codes, K."""
    labels = sorted({str(v) for seq in label_lists for v in seq})
    index = {c: i for i, c in enumerate(labels)}
    return [np.array([index[str(v)] for v in seq], dtype=np.int64) for seq in label_lists], \
        max(len(labels), 1)


def _cell_draws(codes: np.ndarray, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap resamples as counts per observed cell (a cell = one combination of true and
    predicted labels): resampling n rows with replacement draws those counts from
    Multinomial(n, observed cell shares), so drawing them directly is the same bootstrap at
    O(samples x cells) instead of O(samples x n). Returns (cells, counts (samples, cells))."""
    cells, inverse = np.unique(codes, return_inverse=True)
    shares = np.bincount(inverse, minlength=len(cells)) / len(codes)
    rng = np.random.default_rng(seed)
    return cells, rng.multinomial(len(codes), shares, size=samples)


def _from_counts(counts: np.ndarray, yt: np.ndarray, yp: np.ndarray, k: int,
                 n: int) -> dict[str, np.ndarray]:
    """Headline metrics per row of `counts` (B, cells), each cell holding the true code yt and
    the predicted code yp, computed as scikit-learn's `score` does (macro over the labels
    present in truth or prediction, zero_division=0)."""
    true = counts @ np.eye(k)[yt]
    pred = counts @ np.eye(k)[yp]
    tp = counts @ (np.eye(k)[yt] * (yt == yp)[:, None])
    present = (true + pred) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(pred > 0, tp / np.maximum(pred, 1), 0.0)
        rec = np.where(true > 0, tp / np.maximum(true, 1), 0.0)
        f1 = np.where(present, 2 * tp / np.maximum(true + pred, 1), 0.0)
    count = np.maximum(present.sum(axis=1), 1)
    return {"accuracy": tp.sum(axis=1) / n,
            "precision_macro": (prec * present).sum(axis=1) / count,
            "recall_macro": (rec * present).sum(axis=1) / count,
            "f1_macro": (f1 * present).sum(axis=1) / count}


def _interval(values: np.ndarray) -> dict[str, float]:
    """The percentile interval of bootstrap values at LEVEL."""
    lo, hi = np.percentile(values, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return {"low": float(lo), "high": float(hi)}


def point_metrics(yt: np.ndarray, yp: np.ndarray, k: int) -> dict[str, float]:
    """The headline metrics of integer-coded labels (encode), equal to tasks.evaluate.metrics.score's
    but without scikit-learn's per-call label discovery (fast on many slices); zeros for no
    rows."""
    if not len(yt):
        return dict.fromkeys(METRICS, 0.0)
    cells = np.arange(k * k)
    counts = np.bincount(yt * k + yp, minlength=k * k)[None].astype(float)
    return {m: float(v[0]) for m, v in _from_counts(counts, cells // k, cells % k, k,
                                                     len(yt)).items()}


def accuracy_interval(correct: int, rows: int) -> dict[str, float]:
    """The 95% Wilson score interval of accuracy = correct / rows (scipy's binomtest).

    Accuracy is a proportion, and the percentile bootstrap of a proportion collapses to one
    point when every row is right (or wrong): 13 of 13 right gave "1.000–1.000", a certainty 13
    rows cannot give. Wilson's interval keeps its nominal coverage on small samples and at the
    ends (13 of 13: 0.772–1.000). Source: Wilson (1927); Brown, Cai & DasGupta (2001). scipy.stats
    is imported here, not at the top: deploy reads slices through this module, and the lifecycle
    flow has no other use for scipy.stats (~0.5 CPU-s to import)."""
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(rows)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return {"low": float(ci.low), "high": float(ci.high)}


def coded_ci(yt: np.ndarray, yp: np.ndarray, k: int, samples: int, seed: int,
             metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """bootstrap_ci over integer-coded labels (encode once, then slice without re-encoding);
    accuracy's interval is Wilson's (accuracy_interval)."""
    if not len(yt) or samples <= 0:
        return {}
    cells, counts = _cell_draws(yt * k + yp, samples, seed)
    got = _from_counts(counts.astype(float), cells // k, cells % k, k, len(yt))
    out = {m: _interval(got[m]) for m in metrics}
    if "accuracy" in out:
        out["accuracy"] = accuracy_interval(int((yt == yp).sum()), len(yt))
    return out


def bootstrap_ci(y_true: Sequence[str], y_pred: Sequence[str], samples: int, seed: int,
                 metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """95% CI of each metric: accuracy's from Wilson's score interval, the others' from the
    bootstrap (rows resampled with replacement, `samples` times, seeded): {metric: {low, high}};
    {} for no rows or samples == 0."""
    if not len(y_true) or samples <= 0:
        return {}
    (yt, yp), k = encode(y_true, y_pred)
    return coded_ci(yt, yp, k, samples, seed, metrics)


def paired_bootstrap(y_true: Sequence[str], pred_a: Sequence[str], pred_b: Sequence[str],
                     metric: str, samples: int, seed: int) -> dict[str, float]:
    """The difference metric(a) - metric(b) on the same rows: point estimate and a 95% CI from
    resampling rows (both models see the same resample, so their shared errors cancel).
    Returns {diff, low, high}; low = high = diff when samples == 0."""
    (yt, pa, pb), k = encode(y_true, pred_a, pred_b)
    n = len(yt)
    if not n:
        return {"diff": 0.0, "low": 0.0, "high": 0.0}
    cells, whole = np.unique((yt * k + pa) * k + pb, return_counts=True)
    t, a, b = cells // (k * k), (cells // k) % k, cells % k

    def diff_of(c: np.ndarray) -> np.ndarray:
        return _from_counts(c, t, a, k, n)[metric] - _from_counts(c, t, b, k, n)[metric]

    diff = float(diff_of(whole[None].astype(float))[0])
    if samples <= 0:
        return {"diff": diff, "low": diff, "high": diff}
    _, counts = _cell_draws((yt * k + pa) * k + pb, samples, seed)
    return {"diff": diff, **_interval(diff_of(counts.astype(float)))}


def mcnemar(y_true: Sequence[str], pred_a: Sequence[str], pred_b: Sequence[str]) -> dict:
    """McNemar's exact test on the discordant rows: a_only = rows only model a gets right,
    b_only the reverse; p_value = two-sided binomial test of a_only out of a_only + b_only at 1/2
    (1.0 when the two models never disagree on correctness)."""
    from scipy.stats import binomtest

    truth = np.asarray([str(v) for v in y_true], dtype=object)
    a_ok = truth == np.asarray([str(v) for v in pred_a], dtype=object)
    b_ok = truth == np.asarray([str(v) for v in pred_b], dtype=object)
    a_only, b_only = int((a_ok & ~b_ok).sum()), int((~a_ok & b_ok).sum())
    p = 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def calibration(confidence: Sequence[float], correct: Sequence[bool], bins: int) -> dict:
    """Expected calibration error over `bins` equal-width confidence bins (weight = the bin's
    share of rows) and the per-bin table {low, high, rows, confidence, accuracy} behind the
    reliability diagram. ece in [0, 1]; None without rows."""
    conf = np.clip(np.asarray(confidence, dtype=float), 0.0, 1.0)
    ok = np.asarray(correct, dtype=float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        rows = int(mask.sum())
        acc = float(ok[mask].mean()) if rows else None
        mean_conf = float(conf[mask].mean()) if rows else None
        if rows:
            ece += rows / len(conf) * abs(acc - mean_conf)
        table.append({"low": b / bins, "high": (b + 1) / bins, "rows": rows,
                      "confidence": mean_conf, "accuracy": acc})
    return {"ece": float(ece) if len(conf) else None, "bins": table}
