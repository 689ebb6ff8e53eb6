"""The one rule of a setting the user set explicitly (optimize pins those): a --set or
environment layer gives it, or a settings file holds a value off its declared default."""

from __future__ import annotations

import json

from textloop.core.config import explicit_settings


def _train(explicit: dict) -> dict:
    return {k: v for k, v in explicit.items() if k.startswith("train.")}


def test_set_explicitly_means_a_set_layer_or_a_file_value_off_its_default(tmp_path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  tfidf:\n    C: 16.0\n    nb_alpha: 1.0\n    min_df: 3\n")
    monkeypatch.delenv("TEXTLOOP_SET", raising=False)
    assert _train(explicit_settings(path)) == {"train.tfidf.min_df": 3}  # C, nb_alpha: defaults
    monkeypatch.setenv("TEXTLOOP_SET", json.dumps({"train.tfidf.C": 16.0}))  # a run's --set
    assert _train(explicit_settings(path)) == {"train.tfidf.min_df": 3, "train.tfidf.C": 16.0}
    path.write_text("train:\n  tfidf:\n    C: 8\n")  # as `dvc exp run -S train.tfidf.C=8` writes it
    monkeypatch.delenv("TEXTLOOP_SET")
    assert _train(explicit_settings(path)) == {"train.tfidf.C": 8.0}
