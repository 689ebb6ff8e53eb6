"""evaluate: metrics, per-class report and the confusion-matrix plot of any TextClassifier."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.evaluate.metrics import evaluate, plot_confusion, predict_batched


class KeywordModel:
    """A fake classifier: 'good' in the text means pos."""

    classes_ = ("neg", "pos")

    def predict_proba(self, texts):
        p = np.array([0.9 if "good" in t else 0.2 for t in texts])
        return np.column_stack([1 - p, p])


def test_metrics_match_a_hand_count(tmp_path):
    test = pd.DataFrame({"row_id": list("abcd"), "text": ["good", "good", "bad", "meh"],
                         "label": ["pos", "neg", "neg", "pos"]})
    metrics, preds = evaluate(KeywordModel(), test)
    assert metrics["accuracy"] == 0.5 and metrics["n_test"] == 4
    assert metrics["per_class"]["pos"]["recall"] == 0.5
    assert preds["predicted"].tolist() == ["pos", "pos", "neg", "neg"]
    png = plot_confusion(preds, tmp_path / "cm.png", "t")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_labels_unknown_to_the_model_are_reported():
    test = pd.DataFrame({"row_id": ["a"], "text": ["x"], "label": ["neutral"]})
    metrics, _ = evaluate(KeywordModel(), test)
    assert metrics["labels_unseen_in_training"] == ["neutral"]
    assert metrics["accuracy"] == 0.0


def test_batched_prediction_equals_one_batch():
    texts = [f"good {i}" if i % 3 else f"bad {i}" for i in range(10)]
    assert np.allclose(predict_batched(KeywordModel(), texts, batch_size=3),
                       KeywordModel().predict_proba(texts))
