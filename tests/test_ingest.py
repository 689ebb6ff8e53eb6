"""ingest: every source kind, hostile files, clear errors naming file/row/column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.ingest import fingerprint, ingest, read_aclimdb_split, read_file_source
from textloop.core.config import IngestConfig
from textloop.core.errors import UserError


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
    assert report["sources"]["data"] == {"kind": "aclimdb", "source": str(acl), "rows": 4}
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
