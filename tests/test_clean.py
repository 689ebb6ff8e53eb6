"""clean: normalization, duplicates, conflicts, feedback overrides; counts add up."""

from __future__ import annotations

from tasks.clean import clean_frame
from textloop.core.text import normalize_text


def test_normalize_strips_html_collapses_whitespace_and_nfc():
    assert normalize_text("Great<br /><br />film!\t\n  Really") == "Great film! Really"
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # NFD -> NFC
    assert normalize_text("a &amp; b") == "a & b"
    assert normalize_text("ctrl\x00char\x85x") == "ctrl char x"
    assert normalize_text(None) == ""
    assert normalize_text("MiXeD", lowercase=True) == "mixed"


def test_normalize_is_idempotent_on_plain_text():
    text = "I loved it. 10/10 — would watch again 😀 中文"
    assert normalize_text(normalize_text(text)) == normalize_text(text)


def test_clean_quarantines_every_removed_row_with_a_reason(make_raw):
    raw = make_raw([
        ("good movie", "pos", 0.9, "file", "data"),
        ("good  movie", "pos", 0.8, "file", "data"),       # duplicate after normalization
        ("   <br/> ", "neg", 0.9, "file", "data"),          # empty after cleaning
        ("same text", "pos", 0.9, "file", "data"),
        ("same text", "neg", 0.9, "file", "data"),          # conflicting labels
        ("bad movie", "neg", None, "file", "data"),
        ("good movie", "pos", None, "file", "test"),        # same text, other role: kept
    ])
    kept, quarantined, report = clean_frame(raw)
    assert report["rows_in"] == 7
    assert report["rows_out"] + report["rows_quarantined"] == 7
    assert report["quarantined_by_reason"] == {"duplicate_text": 1, "empty_text": 1,
                                               "conflicting_labels": 2}
    assert set(kept["text"]) == {"good movie", "bad movie"}
    assert len(kept) == 3
    assert set(quarantined["stage"]) == {"clean"}
    assert set(quarantined["row_id"]).isdisjoint(set(kept["row_id"]))


def test_feedback_label_supersedes_source_label(make_raw):
    raw = make_raw([
        ("the plot was fine", "neg", 0.9, "file", "data"),
        ("the plot was fine", "pos", 1.0, "feedback", "data"),
    ])
    kept, quarantined, _ = clean_frame(raw)
    assert kept["label"].tolist() == ["pos"]
    assert quarantined["reason"].tolist() == ["superseded_by_feedback"]


def test_unlabeled_duplicate_keeps_the_labeled_copy(make_raw):
    raw = make_raw([("hello there", None, None, "file", "data"),
                    ("hello there", "pos", 0.9, "file", "data")])
    kept, _, _ = clean_frame(raw)
    assert kept["label"].tolist() == ["pos"]


def test_explicit_test_set_is_kept_as_given(make_raw):
    raw = make_raw([("a film", "pos", None, "file", "test"), ("a film", "pos", None, "file", "test"),
                    ("odd", "pos", None, "file", "test"), ("odd", "neg", None, "file", "test")])
    kept, quarantined, report = clean_frame(raw)
    assert len(kept) == 4 and quarantined.empty
    assert report["test_duplicates_kept"] == 2
