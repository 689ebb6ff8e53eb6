"""Monitoring computations on synthetic streams: accuracy, prediction drift, input drift, report."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from tasks.monitor import live_metrics as m
from tests.support.fixtures import synthetic
from textloop.core.config import MonitorConfig

CFG = MonitorConfig(min_rows=50, min_feedback=20)


def served(df: pd.DataFrame, version: str = "1", confidence: float = 0.95,
           labels: pd.Series | None = None, prefix: str = "p") -> pd.DataFrame:
    """A prediction-log window (newest first) for texts, predicting their true label by default."""
    now = dt.datetime(2025, 1, 1)
    return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(df))],
                         "created_at": [now - dt.timedelta(seconds=i) for i in range(len(df))],
                         "model_version": version, "text": df["text"].to_numpy(),
                         "label": (df["label"] if labels is None else labels).to_numpy(),
                         "confidence": confidence})


def labeled(pred: pd.DataFrame, truth: pd.Series) -> pd.DataFrame:
    return pred.assign(true_label=truth.to_numpy())[["id", "created_at", "model_version",
                                                     "label", "confidence", "true_label"]]


@pytest.fixture(scope="module")
def ref() -> m.Reference:
    return m.build_reference(synthetic(2000, seed=0), max_rows=20000)


def test_tokens_and_oov_rate():
    assert m.tokens("Great, GREAT film!! 10/10 é-tude") == ["great", "great", "film", "é", "tude"]
    vocab = m.build_vocab(["a great film"])
    assert m.oov_rate(["great film", "awful film"], vocab) == pytest.approx(0.25)
    assert np.isnan(m.oov_rate(["123 !!"], vocab))


def test_psi_is_zero_for_the_same_mix_and_large_for_a_shift():
    assert m.psi({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == pytest.approx(0.0)
    assert m.psi({"a": 0.5, "b": 0.5}, {"a": 0.95, "b": 0.05}) > 0.2


def test_reference_measures_oov_on_held_out_rows(ref):
    assert ref.n_rows == 2000 and ref.classes == ["neg", "pos"]
    assert 0 <= ref.oov_rate < 0.02  # closed synthetic vocabulary: held-out rows are covered
    assert ref.label_dist["pos"] == pytest.approx(0.5, abs=0.05)


def test_same_distribution_raises_no_alert(ref):
    stream = synthetic(500, seed=5)
    pred = served(stream)
    report = m.build_report(pred, pred, labeled(pred, stream["label"]), ref, CFG, 0.8)
    assert report["alerts"] == [] and report["drift"] is False
    assert report["accuracy"]["accuracy"] == 1.0
    assert report["input_drift"]["oov_increase"] < CFG.max_oov_increase


def test_vocabulary_shift_and_accuracy_drop_are_detected(ref):
    stream = synthetic(500, seed=6, shifted=True)
    wrong = stream["label"].where(np.arange(500) % 2 == 0, "neg")  # v1 half wrong on new words
    pred = served(stream, confidence=0.6, labels=wrong)
    base = served(synthetic(500, seed=7), prefix="b")
    report = m.build_report(pred, base, labeled(pred, stream["label"]), ref, CFG, 0.8)
    text = " | ".join(report["alerts"])
    assert "live accuracy" in text and "OOV rate up" in text
    assert "mean confidence dropped" in text and report["drift"] is True
    assert report["accuracy"]["accuracy"] < 0.8


def test_class_mix_shift_raises_psi_alert(ref):
    stream = synthetic(500, seed=8, pos_share=0.97)
    report = m.build_report(served(stream), None, labeled(served(stream).iloc[:0], pd.Series([],
                            dtype=str)), ref, CFG, 0.8)
    assert any(a.startswith("class mix PSI") for a in report["alerts"])
    assert report["accuracy"]["accuracy"] is None  # no feedback: no accuracy verdict


def test_too_few_rows_give_no_drift_verdict(ref):
    stream = synthetic(10, seed=9, shifted=True)
    report = m.build_report(served(stream), None, labeled(served(stream), stream["label"]),
                            ref, CFG, 0.8)
    assert report["alerts"] == []


def test_live_accuracy_is_per_served_version():
    rows = pd.DataFrame({"model_version": ["1"] * 30 + ["2"] * 30,
                         "label": ["pos"] * 60, "true_label": ["neg"] * 30 + ["pos"] * 30})
    acc = m.live_accuracy(rows, min_feedback=20, version="2")
    assert acc["accuracy"] == 1.0 and acc["per_version"] == {"1": 0.0, "2": 1.0}
    assert m.live_accuracy(rows, min_feedback=40, version="2")["accuracy"] is None


def test_report_files_and_summary(ref, tmp_path):
    stream = synthetic(200, seed=10)
    pred = served(stream)
    report = m.build_report(pred, pred, labeled(pred, stream["label"]), ref, CFG, 0.8)
    files = m.write_report(report, pred, ref, tmp_path / "r")
    assert [f.name for f in files] == ["report.json", "class_mix.png", "confidence.png",
                                       "length.png"]
    assert json.loads(files[0].read_text())["n_predictions"] == 200
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in files[1:])
    summary = m.summary_metrics(report)
    assert summary["live_accuracy"] == 1.0 and all(isinstance(v, float) for v in summary.values())
    json.dumps(report)  # the DB stores it as JSON: no numpy scalars may leak


def test_an_empty_log_gives_an_empty_report(ref, tmp_path):
    empty = served(synthetic(5, seed=11)).iloc[:0]
    report = m.build_report(empty, None, labeled(empty, pd.Series([], dtype=str)), ref, CFG, 0.8)
    assert report["n_predictions"] == 0 and report["alerts"] == []
    assert report["accuracy"]["accuracy"] is None
    files = m.write_report(report, empty, ref, tmp_path)
    assert [f.name for f in files] == ["report.json", "class_mix.png"]
    assert m.summary_metrics(report)["n_predictions"] == 0.0


def test_confidence_reference_never_overlaps_the_current_window(ref):
    """A version's first predictions are the reference; they are never compared with themselves
    (the old report said confidence_drop 0.0 while the window and the reference were one)."""
    stream = synthetic(300, seed=11)
    log = served(stream, confidence=0.9)            # newest first: p0 newest, p299 oldest
    first = log.iloc[::-1].head(100)                # the version's first 100 predictions
    report = m.build_report(log, first, labeled(log.iloc[:0], pd.Series([], dtype=str)), ref,
                            CFG, 0.8)
    drift = report["prediction_drift"]
    assert report["confidence_reference"]["n"] == 100
    assert drift["confidence_window_n"] == 200 and drift["confidence_drop"] == pytest.approx(0.0)
    only_reference = m.build_report(first, first, labeled(first.iloc[:0], pd.Series([], dtype=str)),
                                    ref, CFG, 0.8)
    assert only_reference["prediction_drift"]["confidence_drop"] is None  # not a fake 0.0
    later = log.assign(confidence=np.where(log["id"].isin(first["id"]), 0.9, 0.6))
    dropped = m.build_report(later, first.assign(confidence=0.9),
                             labeled(later.iloc[:0], pd.Series([], dtype=str)), ref, CFG, 0.8)
    assert dropped["prediction_drift"]["confidence_drop"] == pytest.approx(0.3)
    assert any("mean confidence dropped" in a for a in dropped["alerts"])
