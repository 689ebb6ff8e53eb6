"""Numeric labels are one class per value: `1.00` and `1`, `4.50` and `4.5` are each one label
wherever labels are read (ingest, feedback, imports go through canonical_label)."""

from __future__ import annotations

import pandas as pd
import pytest

from textloop.core.label_values import canonical_label, canonicalize_labels


@pytest.mark.parametrize(("a", "b"), [("1.00", "1"), ("4.50", "4.5"), ("1.00", 1.0),
                                      ("4.50", 4.5), ("-2.50", "-2.5"), ("0.0", "0")])
def test_numeric_labels_with_the_same_value_are_one_class(a, b):
    assert canonical_label(a) == canonical_label(b)


def test_the_canonical_spelling_is_the_shortest_exact_decimal():
    assert [canonical_label(v) for v in ("1.00", "1", "4.50", "4.5", "4.500", "10.0")] == [
        "1", "1", "4.5", "4.5", "4.5", "10"]


def test_strings_that_only_look_numeric_keep_their_spelling():
    assert [canonical_label(v) for v in ("01", "4.5.0", "v4.5", "1e0")] == [
        "01", "4.5.0", "v4.5", "1e0"]


def test_a_column_with_1_00_1_4_50_and_4_5_has_two_classes_and_reports_the_rewrites():
    canon, report = canonicalize_labels(pd.Series(["1.00", "1", "4.50", "4.5"]))
    assert canon.tolist() == ["1", "1", "4.5", "4.5"]
    assert report["rows"] == 2
    assert report["spellings"] == [{"from": "1.00", "to": "1"}, {"from": "4.50", "to": "4.5"}]


def test_a_persons_label_maps_onto_the_classes_by_one_rule():
    """`feedback add` stored "Technical" as technical while /feedback answered 422: every path a
    person's label enters by maps it with textloop.core.label_values.known_label."""
    from textloop.core.label_values import known_label

    classes = ["account", "billing", "technical"]
    assert known_label("Technical", classes) == "technical"
    assert known_label(" billing ", classes) == "billing"
    assert known_label("shipping", classes) is None and known_label("", classes) is None
    assert known_label("Pos", ["pos", "POS"]) is None  # two classes differ only in case
    assert known_label("POS", ["pos", "POS"]) == "POS"
