"""clean: normalization, duplicates, conflicts, feedback overrides; counts add up."""

from __future__ import annotations

import pytest

from tasks.clean.clean_parts import clean_frame
from textloop.core.text import normalize_text


def test_normalize_strips_html_collapses_whitespace_and_nfc():
    assert normalize_text("Great<br /><br />film!\t\n  Really") == "Great film! Really"
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # NFD -> NFC
    assert normalize_text("a &amp; b") == "a & b"
    assert normalize_text("ctrl\x00char\x85x") == "ctrlchar x"  # NUL dropped, NEL is whitespace
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


INVISIBLE = ["\u200b", "\u200e", "\u200f", "\u2060", "\ufeff", "\u00ad"]


@pytest.mark.parametrize("ch", INVISIBLE)
def test_format_characters_are_removed(ch):
    assert normalize_text(f"good{ch} mo{ch}vie{ch}") == "good movie"
    assert normalize_text(f"{ch}{ch} ") == ""


def test_nul_and_controls_inside_a_word_are_dropped_not_spaced():
    assert normalize_text("ani\x00mal") == "animal"
    assert normalize_text("ani\x01mal\x9f") == "animal"
    assert normalize_text("I didn\u2019t expect \u201cthat\u201d \u2026 \u20ac12") == (
        "I didn\u2019t expect \u201cthat\u201d \u2026 \u20ac12")  # printable stays printable
    assert normalize_text("e\u200b\u0301") == "\u00e9"  # NFC after removal


def test_zero_width_copies_are_duplicates_and_conflicts(make_raw):
    dup = [(f"a fine{'' if i == 0 else chr(0x200B) * i} film", "pos", 0.9, "file", "data")
           for i in range(20)]
    conflict = [("what a film", "pos", 0.9, "file", "data")] + [
        (f"what\u200b a film{chr(0x200B) * i}", "neg", 0.9, "file", "data") for i in range(10)]
    empty = [("\u200b\u200e\ufeff", "pos", 0.9, "file", "data")] * 3 + [
        ("\u00ad \u2060", "neg", 0.9, "file", "data"), ("\x00", "neg", 0.9, "file", "data")]
    kept, quarantined, report = clean_frame(make_raw(dup + conflict + empty))
    assert report["quarantined_by_reason"] == {"duplicate_text": 19, "conflicting_labels": 11,
                                               "empty_text": 5}
    assert kept["text"].tolist() == ["a fine film"]
    assert report["rows_out"] + report["rows_quarantined"] == 36 == len(kept) + len(quarantined)


def test_zero_rows_do_not_crash(make_raw):
    kept, quarantined, report = clean_frame(make_raw([]))
    assert kept.empty and quarantined.empty
    assert report == {"rows_in": 0, "rows_out": 0, "rows_quarantined": 0,
                      "quarantined_by_reason": {}, "test_duplicates_kept": 0,
                      "redaction": {"kinds": [], "replacements": {}, "rows_changed": 0}}


def test_min_chars_keeps_empty_apart_from_too_short(make_raw):
    raw = make_raw([("\u200b", "pos", 0.9, "f", "data"), ("ok", "pos", 0.9, "f", "data"),
                    ("long enough", "neg", 0.9, "f", "data")])
    _, _, report = clean_frame(raw, min_chars=3)
    assert report["quarantined_by_reason"] == {"empty_text": 1, "too_short": 1}
