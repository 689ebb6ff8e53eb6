"""ingest: every source kind, hostile files, clear errors naming file/row/column."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks.clean.clean_parts import clean_frame
from tasks.ingest import fingerprint, ingest, read_aclimdb_split, read_file_source
from textloop.core.config import IngestConfig
from textloop.core.errors import UserError
from textloop.core.tables import load_table
from textloop.core.text import normalize_text


def make_aclimdb(root: Path) -> Path:
    """A tiny aclImdb-layout folder: train/{pos,neg}, test/{pos,neg}, unsup."""
    reviews = {"train/pos/0_9.txt": "Loved it.<br /><br />Great acting.",
               "train/pos/1_8.txt": "Wonderful film", "train/neg/0_2.txt": "Awful plot",
               "train/neg/1_1.txt": "Boring and bad", "test/pos/0_10.txt": "A masterpiece",
               "test/neg/0_3.txt": "Terrible", "train/unsup/0_0.txt": "no label"}
    for rel, text in reviews.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_aclimdb_folder_keeps_rating_and_brings_its_test_split(tmp_path):
    acl = make_aclimdb(tmp_path / "aclImdb")
    raw, report = ingest(IngestConfig(source=str(acl)), tmp_path, None)
    data = report["sources"]["data"]
    assert (data["kind"], data["source"], data["rows"], data["encoding"]) == ("aclimdb", str(acl), 4, "utf-8")
    assert data["files_skipped"] == 0 and data["rows_repaired"] == 0
    assert report["sources"]["test"]["rows"] == 2
    assert sorted(raw.loc[raw.role == "data", "rating"].tolist()) == [1, 2, 8, 9]
    assert set(raw.loc[raw.role == "test", "label"]) == {"pos", "neg"}
    assert raw["row_id"].is_unique
    assert "aclimdb:train/pos/0_9.txt" in set(raw["row_id"])


def test_aclimdb_bad_file_name_is_a_clear_error(tmp_path):
    acl = make_aclimdb(tmp_path / "acl")
    (acl / "train/pos/oops.txt").write_text("x")
    with pytest.raises(UserError, match=r"oops.txt: file name is not ID_RATING.txt"):
        read_aclimdb_split(acl / "train")


def test_csv_with_other_columns_and_non_utf8_bytes(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes("body,stars,uid\nna\u00efve and fun,good,a1\n".encode("utf-8")
                     + b"caf\xe9 was bad,bad,a2\n")
    cfg = IngestConfig(source=str(path), text_col="body", label_col="stars", id_col="uid")
    df = read_file_source(path, cfg)
    assert df["text"].tolist() == ["na\u00efve and fun", "caf\u00e9 was bad"]
    assert df["encoding_fallback"].tolist() == [False, True]
    assert df["row_id"].tolist() == ["reviews:a1", "reviews:a2"]


def test_strict_encoding_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text,label\nok,pos\n\xff\xfe broken,neg\n")
    with pytest.raises(UserError, match=r"bad.csv: line 3: bytes not valid utf-8"):
        read_file_source(path, IngestConfig(source=str(path), encoding="utf-8"))


@pytest.mark.parametrize("content,cfg,message", [
    ("txt,label\nhi,pos\n", {"text_col": "text"}, r"t.csv, column 'text': text column not found \(columns are: txt, label\)"),
    ("text,label,confidence\nhi,pos,1.5\n", {}, r"t.csv, row 1, column 'confidence': confidence must be"),
    ("text,label,id\na,pos,1\nb,neg,1\n", {"id_col": "id"}, r"t.csv, row 2, column 'id': duplicate id"),
    ("", {}, r"t.csv: file is empty"),
])
def test_hostile_csv_gets_one_clear_error(tmp_path, content, cfg, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_file_source(path, IngestConfig(source=str(path), **cfg))


def test_jsonl_bad_line_names_the_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{not json}\n')
    with pytest.raises(UserError, match=r"d.jsonl, row 2: not valid JSON"):
        read_file_source(path, IngestConfig(source=str(path)))


def test_parquet_and_tsv_sources_and_missing_file(tmp_path):
    pq = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_parquet(pq)
    assert read_file_source(pq, IngestConfig(source=str(pq)))["label"].tolist() == ["0", "1"]
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\nhello, world\tpos\n")
    assert read_file_source(tsv, IngestConfig(source=str(tsv)))["text"].tolist() == ["hello, world"]
    with pytest.raises(UserError, match="data source not found"):
        ingest(IngestConfig(source="nope.csv"), tmp_path, None)
    with pytest.raises(UserError, match="unsupported file type"):
        (tmp_path / "x.xlsx").write_text("")
        ingest(IngestConfig(source=str(tmp_path / "x.xlsx")), tmp_path, None)


def test_feedback_store_rows_join_as_trusted_labels(tmp_path):
    from tasks.feedback import append_batch

    src = tmp_path / "d.csv"
    src.write_text("text,label\nfine,pos\n")
    append_batch(tmp_path / "fb", pd.DataFrame({"text": ["meh"], "label": ["neg"]}))
    raw, report = ingest(IngestConfig(source=str(src)), tmp_path, tmp_path / "fb")
    fb = raw[raw.source == "feedback"]
    assert fb["label"].tolist() == ["neg"] and fb["confidence"].tolist() == [1.0]
    assert report["sources"]["feedback"]["rows"] == 1
    assert report["rows"] == 2


def test_fingerprint_changes_with_content(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("text,label\nfine,pos\n")
    before = fingerprint(IngestConfig(source="d.csv"), tmp_path)
    src.write_text("text,label\nfine,neg\n")
    assert fingerprint(IngestConfig(source="d.csv"), tmp_path) != before
    json.dumps(before)  # JSON-able for the DVC out


# --- files that crash instead of erroring -------------------------------------

def _cfg(path: Path, **kw) -> IngestConfig:
    return IngestConfig(source=str(path), **kw)


def test_header_without_rows_is_a_clear_error(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("text,label\n")
    with pytest.raises(UserError, match=r"h.csv: no data rows \(columns are: text, label\)"):
        ingest(_cfg(path), tmp_path, None)


def test_executable_renamed_to_csv_is_one_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(Path(sys.executable).resolve().read_bytes()[:200_000])
    with pytest.raises(UserError, match=r"data.csv: not a text file") as exc:
        ingest(_cfg(path), tmp_path, None)
    assert "\n" not in str(exc.value)


def test_semicolon_export_is_sniffed(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text('text;label\n"Great, really good";pos\nawful, just awful;neg\n')
    raw, report = ingest(_cfg(path), tmp_path, None)
    assert raw["text"].tolist() == ["Great, really good", "awful, just awful"]
    assert raw["label"].tolist() == ["pos", "neg"]
    assert report["sources"]["data"]["delimiter"] == ";"


def test_unquoted_delimiter_in_the_first_row_is_an_error_not_a_shift(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("text,label\ngood, really good,pos\nbad,neg\n")
    with pytest.raises(UserError, match=r"u.csv, line 2: not valid CSV: Expected 2 fields in line 2, saw 3"):
        read_file_source(path, _cfg(path))


def test_broken_csv_names_file_line_and_delimiter(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("text,label\nfine,pos\ntoo,many,fields\n")
    with pytest.raises(UserError, match=r"b.csv, line 3: not valid CSV: Expected 2 fields in line 3, "
                                        r"saw 3 \(check the delimiter") as exc:
        read_file_source(path, _cfg(path))
    assert "\n" not in str(exc.value)


def test_a_broken_row_after_a_quoted_newline_is_named_by_the_line_an_editor_shows(tmp_path):
    """A ticket file with a quoted newline early on and too many fields on line 307: pandas
    said 'line 306' (it numbers records, not lines)."""
    rows = [f"ticket {i} about my invoice,billing" for i in range(304)]
    rows[100] = '"my screen\nflickers",technical'
    path = tmp_path / "tickets.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\nI was charged twice,billing,urgent,x\n")
    assert path.read_text().splitlines()[306] == "I was charged twice,billing,urgent,x"  # line 307
    with pytest.raises(UserError, match=r"tickets.csv, line 307: not valid CSV: Expected 2 "
                                        r"fields in line 307, saw 4"):
        read_file_source(path, _cfg(path))


LONE_CR = b"text,label\ngreat film,pos\nhello\rworld,pos\nfoo,neg\n"


@pytest.mark.parametrize("reader", ["whole", "chunks"])
def test_a_lone_carriage_return_in_an_unquoted_field_is_refused_not_a_new_row(tmp_path, reader):
    """'hello\\rworld,pos' in a file whose lines end in \\n: pandas (like every CSV reader) ended
    the row at the \\r and read 4 rows from 3, one of them without a label. Refused, naming the
    line an editor shows and the column, both when read whole and streamed in chunks."""
    from textloop.core.tables import iter_table

    path = tmp_path / "reviews.csv"
    path.write_bytes(LONE_CR)
    message = (r"reviews.csv, line 3, column 'text': a carriage return \(\\r\) inside an unquoted "
               r"field would split this row in two; quote the field or remove the character")
    with pytest.raises(UserError, match=message):
        load_table(path) if reader == "whole" else list(iter_table(path, 2))


@pytest.mark.parametrize("reader", ["whole", "chunks"])
def test_carriage_returns_inside_quotes_and_old_mac_line_ends_are_read(tmp_path, reader):
    """A \\r inside a quoted field is text (the default corpus has 3,344 of them); a file whose
    lines all end in a lone \\r is read line by line; a TSV names its column too."""
    from textloop.core.tables import iter_table

    read = (lambda p: load_table(p).frame) if reader == "whole" else (
        lambda p: pd.concat(list(iter_table(p, 2)), ignore_index=True))
    quoted, mac, tsv = tmp_path / "q.csv", tmp_path / "mac.csv", tmp_path / "t.tsv"
    quoted.write_bytes(b'text,label\r\n"hel\rlo",pos\r\nfoo,neg\r\n')
    mac.write_bytes(b"text,label\rhello,pos\rfoo,neg\r")
    tsv.write_bytes(b"label\ttext\npos\tok\nneg\tbad\r text\n")
    assert read(quoted).to_dict("records") == [{"text": "hel\rlo", "label": "pos"},
                                               {"text": "foo", "label": "neg"}]
    assert read(mac).to_dict("records") == [{"text": "hello", "label": "pos"},
                                            {"text": "foo", "label": "neg"}]
    with pytest.raises(UserError, match=r"t.tsv, line 3, column 'text': a carriage return"):
        read(tsv)


@pytest.mark.parametrize("suffix", ["csv", "tsv"])
def test_a_text_with_a_lone_carriage_return_is_written_so_it_reads_back_as_one_row(tmp_path,
                                                                                   suffix):
    """Scoring '"hel\\rlo",pos' wrote hel\\rlo unquoted: the output read back as 2 rows (and
    textloop refused its own output). Whole files and chunk-appended ones are quoted."""
    from textloop.core.tables import TableAppender, iter_table, write_table

    frame = pd.DataFrame({"text": ["hel\rlo", "fine"], "label": ["pos", None],
                          "score": [0.5, 1.0]})
    whole, chunked = tmp_path / f"whole.{suffix}", tmp_path / f"chunked.{suffix}"
    write_table(frame, whole)
    appender = TableAppender(chunked)
    for start in (0, 1):
        appender.write(frame.iloc[start:start + 1])
    for path in (whole, chunked):
        for read in (load_table(path).frame, pd.concat(list(iter_table(path, 1)))):
            assert read["text"].tolist() == ["hel\rlo", "fine"]
            assert read["label"].isna().tolist() == [False, True]


def test_corrupt_parquet_is_one_line(tmp_path):
    path = tmp_path / "c.parquet"
    path.write_bytes(b"PAR1" + b"\x00garbage" * 10)
    with pytest.raises(UserError, match=r"c.parquet: not a readable Parquet file") as exc:
        read_file_source(path, _cfg(path))
    assert "\n" not in str(exc.value)


# --- encodings ----------------------------------------------------------------

WIN = "I didn\u2019t expect \u201cthat\u201d \u2026 \u20ac12"


def test_windows_1252_file_keeps_curly_quotes_and_euro(tmp_path):
    path = tmp_path / "win.csv"
    path.write_bytes(f"text,label\n{WIN},pos\nplain row,neg\n".encode("cp1252"))
    raw, report = ingest(_cfg(path), tmp_path, None)
    assert raw["text"].tolist() == [WIN, "plain row"]
    assert raw["encoding_fallback"].tolist() == [True, False]
    src = report["sources"]["data"]
    assert (src["encoding"], src["rows_repaired"]) == ("utf-8+cp1252", 1)
    assert report["encoding"]["rows_not_utf8"] == 1
    kept, _, _ = clean_frame(raw)
    assert kept["text"].tolist() == [WIN, "plain row"]  # nothing turned into spaces


def test_bytes_cp1252_cannot_decode_fall_back_to_latin1(tmp_path):
    path = tmp_path / "l1.csv"
    path.write_bytes(b"text,label\ncaf\xe9 \x81ok,pos\n")
    read = load_table(path)
    assert read.encoding == "utf-8+latin-1"
    assert read.frame["text"].tolist() == ["caf\u00e9 \x81ok"]
    assert normalize_text(read.frame["text"][0]) == "caf\u00e9 ok"  # the C1 control is invisible


@pytest.mark.parametrize("text", ["caf\u00e9", "ma\u00f1ana", "Sch\u00f6ne Gr\u00fc\u00dfe", "\u00e9t\u00e9"])
def test_short_western_legacy_text_is_cp1252_not_a_guess(tmp_path, text):
    path = tmp_path / "s.csv"
    path.write_bytes(f"text,label\n{text},pos\n".encode("cp1252"))
    read = load_table(path)
    assert (read.frame["text"].tolist(), read.encoding) == ([text], "utf-8+cp1252")


def test_non_latin_legacy_file_is_detected(tmp_path):
    text = "Очень хороший фильм, рекомендую всем друзьям и знакомым"
    path = tmp_path / "ru.csv"
    path.write_bytes(f'text,label\n"{text}",pos\nУжасно скучно и плохо снято,neg\n'.encode("cp1251"))
    read = load_table(path)
    assert read.frame["text"][0] == text
    assert read.encoding == "cp1251"
    assert read.repaired.tolist() == [True, True]


def test_non_utf8_jsonl_is_decoded_per_line(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_bytes(json.dumps({"text": WIN, "label": "pos"}, ensure_ascii=False).encode("cp1252")
                     + b"\n" + json.dumps({"text": "line\u2028sep \x85 kept", "label": "neg"},
                                          ensure_ascii=False).encode("utf-8") + b"\n")
    read = load_table(path)
    assert read.frame["text"].tolist() == [WIN, "line\u2028sep \x85 kept"]
    assert (read.encoding, read.repaired.tolist()) == ("utf-8+cp1252", [True, False])


def test_unpaired_surrogate_escape_in_jsonl_is_one_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n{"text": "bad \\ud800 x", "label": "neg"}\n')
    with pytest.raises(UserError, match=r"s.jsonl, row 2, column 'text': not valid Unicode"):
        ingest(_cfg(path), tmp_path, None)


def test_nul_inside_a_word_is_dropped_through_ingest_and_clean(tmp_path):
    path = tmp_path / "n.csv"
    path.write_bytes(b"text,label\nani\x00mal,pos\nzero\xe2\x80\x8bwidth,neg\n")
    raw, _ = ingest(_cfg(path), tmp_path, None)
    kept, _, _ = clean_frame(raw)
    assert kept["text"].tolist() == ["animal", "zerowidth"]


def test_utf16_with_bom_is_read(tmp_path):
    path = tmp_path / "u16.tsv"
    path.write_bytes("text\tlabel\nna\u00efve\tpos\n".encode("utf-16"))
    read = load_table(path)
    assert read.frame["text"].tolist() == ["na\u00efve"] and read.encoding == "utf-16"
    assert not read.repaired.any()


# --- one label written several ways -------------------------------------------

def test_integer_labels_written_as_floats_are_one_class(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(6)))
    test = tmp_path / "test.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0.0, 1.0, None]}).to_parquet(test)
    raw, report = ingest(IngestConfig(source=str(train), test_source=str(test)), tmp_path, None)
    assert raw["label"].tolist() == ["0", "1", "0", "1", "0", "1", "0", "1", None]
    assert report["distinct_labels"] == 2
    assert report["sources"]["test"]["labels_rewritten"] == {
        "rows": 2, "spellings": [{"from": "0.0", "to": "0"}, {"from": "1.0", "to": "1"}]}


CASES = ["Positive", "positive", " POSITIVE", "Negative", "NEGATIVE", " Negative "]


def test_label_spellings_differing_in_case_are_merged(tmp_path):
    path = tmp_path / "c.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(6)], "label": CASES}).to_csv(path, index=False)
    raw, report = ingest(_cfg(path), tmp_path, None)
    assert raw["label"].tolist() == ["Positive"] * 3 + ["Negative"] * 3
    assert report["labels"]["merges"] == [
        {"into": "Negative", "rows_kept": 2, "from": {"NEGATIVE": 1}},
        {"into": "Positive", "rows_kept": 1, "from": {"positive": 1, "POSITIVE": 1}}]
    assert report["labels"]["rows_merged"] == 3
    kept, _ = ingest(_cfg(path), tmp_path, None, merge_case=False)
    assert sorted(set(kept["label"])) == ["NEGATIVE", "Negative", "POSITIVE", "Positive", "positive"]


def test_test_label_unseen_in_training_is_an_error(tmp_path):
    train, test = tmp_path / "tr.csv", tmp_path / "te.csv"
    train.write_text("text,label\na,pos\nb,neg\n")
    test.write_text("text,label\nc,pos\nd,neg\ne,meh\n")
    with pytest.raises(UserError, match=r"te.csv: test labels not in the training data: meh "
                                        r"\(training labels from .*tr.csv: neg, pos; test labels: meh, neg, pos\)"):
        ingest(IngestConfig(source=str(train), test_source=str(test)), tmp_path, None)


# --- values of the wrong shape ------------------------------------------------

def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows,message", [
    ([{"text": "a", "label": ["pos", "spoiler"]}, {"text": "b", "label": "neg"}],
     r"d.jsonl, column 'label': multi-label is not supported yet \(row 1 holds a list \['pos', 'spoiler'\]\)"),
    ([{"text": "a", "label": "neg"}, {"text": "b", "label": ["pos"]}],
     r"multi-label is not supported yet \(row 2 holds a list \['pos'\]\)"),
    ([{"text": "a", "label": "neg|spoiler"}, {"text": "b", "label": "pos|spoiler"}, {"text": "c", "label": "pos"}],
     r"multi-label is not supported yet \(2 of 3 labels contain '\|' \(e.g. 'neg\|spoiler'\)\)"),
    ([{"text": None, "label": "pos"}, {"text": None, "label": "neg"}],
     r"d.jsonl, column 'text': no row has a text \(all 2 empty\)"),
    ([{"text": "ok", "label": "pos"}, {"text": {"title": "x"}, "label": "neg"}],
     r"d.jsonl, row 2, column 'text': expected text, got an object"),
    ([{"text": "ok", "label": "pos"}, {"text": "ok2", "label": "neg"}, {"text": ["a", "b"], "label": "neg"}],
     r"d.jsonl, row 3, column 'text': expected text, got a list"),
    ([{"text": "ok", "label": {"v": 1}}, {"text": "ok2", "label": "neg"}],
     r"d.jsonl, row 1, column 'label': expected one label \(text or number\), got an object"),
])
def test_wrong_shapes_are_one_line_naming_row_and_column(tmp_path, rows, message):
    path = _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError, match=message):
        ingest(_cfg(path), tmp_path, None)


def test_parquet_struct_text_column_is_an_error(tmp_path):
    path = tmp_path / "s.parquet"
    pd.DataFrame({"text": [{"a": 1}, {"a": 2}], "label": ["x", "y"]}).to_parquet(path)
    with pytest.raises(UserError, match=r"s.parquet, row 1, column 'text': expected text, got an object"):
        ingest(_cfg(path), tmp_path, None)


# --- label sets that do not meet ----------------------------------------------

def test_leading_zero_labels_do_not_meet_integer_labels(tmp_path):
    train, test = tmp_path / "tr.csv", tmp_path / "te.parquet"
    train.write_text("text,label\na,01\nb,02\n")
    pd.DataFrame({"text": ["c", "d"], "label": [1, 2]}).to_parquet(test)
    with pytest.raises(UserError, match=r"te.parquet: test labels not in the training data: 1, 2 "
                                        r"\(training labels from .*: 01, 02; test labels: 1, 2\)"):
        ingest(IngestConfig(source=str(train), test_source=str(test)), tmp_path, None)


def test_aclimdb_with_an_empty_test_class_is_an_error(tmp_path):
    acl = make_aclimdb(tmp_path / "aclImdb")
    (acl / "test/neg/0_3.txt").unlink()
    with pytest.raises(UserError, match=r"test: the test set has no rows of class neg "
                                        r"\(training labels from .*: neg, pos; test labels: pos\)"):
        ingest(IngestConfig(source=str(acl)), tmp_path, None)


# --- folders with the usual junk ----------------------------------------------

def test_os_metadata_files_are_skipped_and_counted(tmp_path):
    acl = make_aclimdb(tmp_path / "aclImdb")
    (acl / "train/pos/._0_9.txt").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (acl / "train/pos/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (acl / "train/neg/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (acl / "train/neg/desktop.ini").write_text("[.ShellClassInfo]")
    _, report = ingest(IngestConfig(source=str(acl)), tmp_path, None)
    assert report["sources"]["data"]["rows"] == 4
    assert report["sources"]["data"]["files_skipped"] == 4
    assert sorted(report["sources"]["data"]["skipped_examples"]) == [
        "neg/Thumbs.db", "neg/desktop.ini", "pos/.DS_Store", "pos/._0_9.txt"]


# --- the data read is the data fingerprinted ----------------------------------

def test_ingest_digest_is_the_bytes_read_and_matches_the_fingerprint(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("text,label\nfine,pos\nbad,neg\n")
    fp = fingerprint(IngestConfig(source="d.csv"), tmp_path)
    _, report = ingest(IngestConfig(source="d.csv"), tmp_path, None, expected=fp)
    assert report["sources"]["data"]["digest"] == fp["data"]["digest"] == hashlib.md5(src.read_bytes()).hexdigest()
    acl = make_aclimdb(tmp_path / "aclImdb")
    fp = fingerprint(IngestConfig(source=str(acl)), tmp_path)
    _, report = ingest(IngestConfig(source=str(acl)), tmp_path, None, expected=fp)
    assert report["sources"]["data"]["digest"] == fp["data"]["digest"]
    assert report["sources"]["test"]["digest"] == fp["test"]["digest"]


def test_source_replaced_after_fingerprint_fails_ingest(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("text,label\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(250)))
    fp = fingerprint(IngestConfig(source="d.csv"), tmp_path)
    src.write_text("text,label\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(400)))
    with pytest.raises(UserError, match=r"d.csv: source changed while the run started"):
        ingest(IngestConfig(source="d.csv"), tmp_path, None, expected=fp)
    acl = make_aclimdb(tmp_path / "aclImdb")
    fp = fingerprint(IngestConfig(source=str(acl)), tmp_path)
    (acl / "train/pos/1_8.txt").write_text("Wonderful film, edited")
    with pytest.raises(UserError, match="source changed while the run started"):
        ingest(IngestConfig(source=str(acl)), tmp_path, None, expected=fp)


def test_cli_prints_each_error_line_once():
    import typer
    from typer.testing import CliRunner

    from textloop.cli.command_context import error_line, user_errors

    streamed = "error: d.csv: no data rows (columns are: text, label)"
    assert error_line(UserError(f"stage ingest failed: {streamed}")) == (
        "stage ingest failed (its error is printed above)")
    assert error_line(UserError("d.csv, row 2, column 'text': expected text")) == (
        "d.csv, row 2, column 'text': expected text")
    app = typer.Typer()

    @app.command()
    @user_errors
    def fail() -> None:
        raise UserError("d.csv: no data rows (columns are: text, label)")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert result.output.count("no data rows") == 1


def test_semicolon_export_with_commas_in_the_text_is_read(tmp_path):
    """csv.Sniffer gives up on free text; the header line still names the delimiter."""
    from textloop.core.tables import read_table

    rows = [f"{'pos' if i % 2 else 'neg'};0.9;\"well, well, text {i}, with commas\"" for i in range(60)]
    path = tmp_path / "semi.csv"
    path.write_text("label;confidence;text\n" + "\n".join(rows) + "\n")
    df, _ = read_table(path)
    assert list(df.columns) == ["label", "confidence", "text"] and len(df) == 60
    assert df["text"].iloc[0] == "well, well, text 0, with commas"


def test_a_column_named_twice_is_refused(tmp_path):
    """pandas would read `text` and `text.1` and ingest would train on the first one."""
    from textloop.core.tables import read_table

    path = tmp_path / "dup.csv"
    path.write_text("text,text,label\njunk,real review,pos\n")
    with pytest.raises(UserError) as info:
        read_table(path)
    assert str(info.value) == (f"{path}, line 1: column 'text' appears twice in the header "
                               "(columns 1 and 2); rename one")
