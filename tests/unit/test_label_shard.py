"""label and shard: trusted vs queued rows, stable hashed splits, explicit test sets."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.label import split_trusted
from tasks.shard import bucket
from tasks.shard.shard_parts import assign_splits, check_splits, split_report, write_shards
from textloop.core.config import LabelConfig, ShardConfig
from textloop.core.errors import UserError
from textloop.core.label_values import (
    canonical_label,
    canonicalize_labels,
    check_label_sets,
    merge_label_case,
)
from textloop.core.splits import read_split


def test_label_queues_unlabeled_and_low_confidence(make_raw):
    df = make_raw([("a", "pos", 0.9, "f", "data"), ("b", None, None, "f", "data"),
                   ("c", "neg", 0.2, "f", "data"), ("d", "neg", None, "f", "data")])
    trusted, queue, report = split_trusted(df, LabelConfig(min_confidence=0.5))
    assert trusted["text"].tolist() == ["a", "d"]
    assert dict(zip(queue["text"], queue["reason"])) == {"b": "no_label", "c": "low_confidence"}
    assert report["rows_trusted"] + report["rows_queued"] == report["rows_in"] == 4
    assert queue["label"].eq("").all()  # for the labeler to fill
    strict = split_trusted(df, LabelConfig(min_confidence=0.5, missing_confidence="queue"))[1]
    assert "missing_confidence" in set(strict["reason"])


def _labeled(n: int, role: str = "data", prefix: str = "t") -> pd.DataFrame:
    return pd.DataFrame({"row_id": [f"{prefix}{i}" for i in range(n)],
                         "text": [f"{prefix} text {i}" for i in range(n)],
                         "label": ["pos" if i % 2 else "neg" for i in range(n)],
                         "source": "f", "origin": "x", "role": role})


def test_adding_data_never_moves_an_existing_row():
    cfg = ShardConfig(val_fraction=0.2, test_fraction=0.2)
    small, _ = assign_splits(_labeled(200), cfg)
    big, _ = assign_splits(pd.concat([_labeled(200), _labeled(300, prefix="new")]), cfg)
    merged = small.merge(big, on="row_id", suffixes=("_a", "_b"))
    assert len(merged) == 200
    assert (merged["split_a"] == merged["split_b"]).all()
    fractions = big["split"].value_counts(normalize=True)
    assert 0.12 < fractions["test"] < 0.28 and 0.12 < fractions["val"] < 0.28


def test_explicit_test_set_overrides_split_and_removes_overlap():
    data = _labeled(100)
    test = _labeled(10, role="test", prefix="x")
    test.loc[0, "text"] = data.loc[5, "text"]  # leaked row
    split, quarantined = assign_splits(pd.concat([data, test], ignore_index=True), ShardConfig())
    assert set(split.loc[split.role == "test", "split"]) == {"test"}
    assert set(split.loc[split.role == "data", "split"]) <= {"train", "val"}
    assert quarantined["reason"].tolist() == ["overlaps_test_set"]
    report = split_report(split, 110, quarantined)
    assert sum(s["rows"] for s in report["splits"].values()) + 1 == 110


def test_shards_respect_rows_per_shard_and_read_back(tmp_path):
    split, _ = assign_splits(_labeled(300), ShardConfig())
    written = write_shards(split, tmp_path, rows_per_shard=50)
    assert len(written["train"]) >= 4
    back = read_split(tmp_path, "train")
    assert len(back) == (split["split"] == "train").sum()


def test_split_checks_are_clear():
    one_class = _labeled(50).assign(label="pos")
    split, _ = assign_splits(one_class, ShardConfig())
    with pytest.raises(UserError, match="train split has 1 class"):
        check_splits(split)
    tiny, _ = assign_splits(_labeled(1), ShardConfig())
    with pytest.raises(UserError, match="split is empty"):
        check_splits(tiny)
    with pytest.raises(UserError, match="no labeled rows to split: every row lacks a trusted label"):
        check_splits(tiny.iloc[:0])  # newcomer fault: an all-empty label column said "change
        # shard.val_fraction", pointing the wrong way


def test_bucket_is_stable_and_salted():
    assert bucket("hello", "s") == bucket("hello", "s")
    assert bucket("hello", "s") != bucket("hello", "t")
    assert 0 <= bucket("x", "s") < 1


@pytest.mark.parametrize("value,expected", [
    (1, "1"), (1.0, "1"), ("1.0", "1"), ("1", "1"), (" 2 ", "2"), ("-0.0", "0"), (0.5, "0.5"),
    ("01", "01"), ("1e3", "1e3"), (" POSITIVE ", "POSITIVE"), ("pos\u200b", "pos"),
    (True, "True"), (None, None), (float("nan"), None), ("", None), ("  ", None),
])
def test_canonical_label(value, expected):
    assert canonical_label(value) == expected


def test_canonicalize_reports_every_rewrite():
    labels, report = canonicalize_labels(pd.Series([0, 1.0, "1.0", " neg", None], dtype=object))
    assert labels.tolist() == ["0", "1", "1", "neg", None]
    assert report == {"rows": 3, "spellings": [{"from": " neg", "to": "neg"},
                                               {"from": "1.0", "to": "1"}]}


def test_case_merge_onto_the_most_frequent_spelling():
    labels = pd.Series(["pos", "POS", "pos", "Neg", "neg", "NEG", None], dtype=object)
    merged, report = merge_label_case(labels)
    assert merged.tolist() == ["pos", "pos", "pos", "Neg", "Neg", "Neg", None]  # tie: first seen
    assert report["merges"] == [{"into": "pos", "rows_kept": 2, "from": {"POS": 1}},
                                {"into": "Neg", "rows_kept": 1, "from": {"neg": 1, "NEG": 1}}]
    assert report["classes"] == [{"label": "Neg", "rows": 3}, {"label": "pos", "rows": 3}]
    kept, report = merge_label_case(labels, enabled=False)
    assert kept.tolist() == labels.tolist() and report["merges"] == []


def test_label_sets_must_meet():
    train = pd.Series(["neg", "pos", None])
    check_label_sets(train, pd.Series(["pos", "neg"]), "tr", "te")
    check_label_sets(train, pd.Series([], dtype=object), "tr", "te")  # no test set
    with pytest.raises(UserError, match=r"te: test labels not in the training data: 2 "
                                        r"\(training labels from tr: neg, pos; test labels: 2, neg\)"):
        check_label_sets(train, pd.Series(["neg", "2"]), "tr", "te")
    with pytest.raises(UserError, match=r"te: the test set has no rows of class neg"):
        check_label_sets(train, pd.Series(["pos", None]), "tr", "te")


def test_multi_label_evidence_needs_label_like_parts():
    from textloop.core.label_values import multi_label_evidence

    assert multi_label_evidence(pd.Series(["neg|spoiler", "pos|spoiler", "pos"])) == (
        "2 of 3 labels contain '|' (e.g. 'neg|spoiler')")
    assert multi_label_evidence(pd.Series(["action, comedy", "drama, war", "drama"])) == (
        "2 of 3 labels contain ',' (e.g. 'action, comedy')")
    sentences = pd.Series(["I liked it, really, a lot more than I thought", "bad, so bad, awful film here"])
    assert multi_label_evidence(sentences) is None  # a text column picked as labels: not multi-label
    assert multi_label_evidence(pd.Series(["pos", "neg", "a,b"])) is None  # one odd label
    assert multi_label_evidence(pd.Series([["pos"], "neg"], dtype=object)) == "row 1 holds a list ['pos']"
