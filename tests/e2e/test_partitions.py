"""Partitioned ingest -> clean -> label -> shard (each stage's plan run by
textloop/pipeline/executor.py over partitions) and batch predict give the in-memory path's
outputs: byte-identical shards and label queue, the same frames in the single Parquet files, the same reports, on a corpus whose duplicates, conflicts, near-duplicates
and test-set overlaps sit in different partitions (partitions of 7 rows)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.support.e2e_project import isolate_env, make_project
from tests.support.fixtures import synthetic
from textloop.core.config import apply_overrides
from textloop.core.layout import Project
from textloop.pipeline import stages

STAGES = ("ingest", "clean", "label", "shard")
REPORTS = ("ingest", "clean", "label", "split")


def corpus(n: int = 90, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A labeled corpus with planted faults far apart, and an explicit test set overlapping it."""
    df = synthetic(n, seed).assign(confidence=0.9)
    rng = np.random.default_rng(seed)
    rows = [
        ("<b>" + df.text[3] + "</b>", df.label[3], 0.9),   # same text once normalised: dupe of 3
        (df.text[5].upper(), df.label[5], 0.9),             # differs: case is kept (lowercase off)
        (df.text[10], "neg" if df.label[10] == "pos" else "pos", 0.9),  # conflict with row 10
        (df.text[20], None, None),                          # unlabeled copy of a labeled text
        ("  ", "pos", 0.9),                                 # empty after normalisation
        (df.text[30] + " indeed", df.label[30], 0.9),       # near-duplicate of row 30
        ("a lone unsure review of the film", "pos", 0.2),   # low confidence: queued
        ("nobody labeled this one at all", None, None),     # no label: queued
        (df.text[50], df.label[50].upper(), 0.9),           # POS/NEG: merged onto pos/neg
        (df.text[60] + " really", df.label[60], 0.9),       # near-duplicate of a test row
    ]
    extra = pd.DataFrame(rows, columns=["text", "label", "confidence"])
    data = pd.concat([df, extra, df.iloc[[3, 7, 7, 12]]], ignore_index=True)  # exact dupes
    data = data.iloc[np.r_[0:45, rng.permutation(np.arange(45, len(data)))]].reset_index(drop=True)
    test = synthetic(20, seed + 1)
    test = pd.concat([test, pd.DataFrame({"text": [df.text[15], df.text[60]],
                                          "label": [df.label[15], df.label[60]]})],
                     ignore_index=True)
    return data, test


def _outputs(project: Project) -> dict[str, object]:
    """Every output of the four stages: bytes for files compared byte for byte, frames for
    the single Parquet files (written in row groups by the partitioned path), parsed reports."""
    p = project.params()
    out: dict[str, object] = {}
    for name in ("raw", "clean", "labeled", "label_issues", "weak_labels"):
        out[name] = pd.read_parquet(project.path(getattr(p.paths, name)))
    for q in ("clean", "label", "shard"):
        out[f"quarantine/{q}"] = pd.read_parquet(project.path(p.paths.quarantine) / f"{q}.parquet")
    out["queue"] = project.path(p.paths.label_queue).read_bytes()
    shards = project.path(p.paths.shards)
    out["shards"] = {str(f.relative_to(shards)): f.read_bytes()
                     for f in sorted(shards.rglob("*.parquet"))}
    for r in REPORTS:
        out[f"metrics/{r}"] = json.loads((project.root / f"metrics/{r}.json").read_text())
    return out


def _run(project: Project) -> dict[str, object]:
    for name in STAGES:
        stages.run_stage(name, project)
    return _outputs(project)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    data, test = corpus()
    (tmp_path / "data").mkdir()
    data.to_parquet(tmp_path / "data/big.parquet", row_group_size=5)  # odd row groups
    test.to_parquet(tmp_path / "data/test.parquet")
    root = make_project(tmp_path / "p", str(tmp_path / "data/big.parquet"),
                        **{"ingest.test_source": str(tmp_path / "data/test.parquet"),
                           "ingest.include_feedback": False,
                           "shard.near_duplicates.shingle_words": 2,
                           "shard.near_duplicates.threshold": 0.5,
                           "backend.dask_scheduler": "synchronous"})
    isolate_env(monkeypatch, root)
    return Project(root)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, b[key], check_dtype=True, obj=key)
        else:
            assert value == b[key], key


def test_partitioned_stages_equal_the_in_memory_path(project: Project) -> None:
    apply_overrides(project.params_path, {"backend.partitioned": False})
    whole = _run(project)
    # the corpus exercises every rule, so equality below is not vacuous
    clean = whole["metrics/clean"]["quarantined_by_reason"]
    assert clean["duplicate_text"] >= 5 and clean["conflicting_labels"] >= 2
    assert clean["empty_text"] == 1
    assert whole["metrics/ingest"]["labels"]["rows_merged"] == 1
    assert whole["metrics/label"]["queued_by_reason"] == {"low_confidence": 1, "no_label": 1}
    split = whole["metrics/split"]
    assert split["near_duplicates"]["groups"] >= 1
    assert split["rows_quarantined"] >= 2  # overlaps_test_set + near_duplicate_of_test
    reasons = set(whole["quarantine/shard"]["reason"])
    assert reasons == {"overlaps_test_set", "near_duplicate_of_test"}
    for rows in (7, 1000):
        shutil.rmtree(project.path(project.params().paths.shards))
        apply_overrides(project.params_path, {"backend.partitioned": True,
                                              "backend.partition_rows": rows})
        got = _run(project)
        raw = pq.ParquetFile(project.path(project.params().paths.raw))
        groups = raw.metadata.num_row_groups  # data and test sources in batches of `rows`
        assert groups == (2 if rows == 1000 else -(-105 // 7) + -(-22 // 7))
        _assert_same(whole, got)


def test_auto_partitions_only_above_the_threshold(project: Project) -> None:
    from tasks.ingest.ingest_plan import source_rows
    from textloop.pipeline.executor import use_partitions

    rows = source_rows(project.params().ingest, project.root)  # the Parquet source's footer
    assert rows == len(corpus()[0])
    apply_overrides(project.params_path, {"backend.partition_above": 1000})
    assert not use_partitions(project.params().backend, rows)
    apply_overrides(project.params_path, {"backend.partition_above": 50})
    assert use_partitions(project.params().backend, rows)


def test_near_duplicate_groups_from_band_keys_match_the_in_memory_rule() -> None:
    from tasks.shard.neardup import near_duplicate_groups
    from tasks.shard.shard_parts import band_keys, groups_from_bands

    texts = synthetic(60, 3)["text"].tolist()
    texts += [t + " again" for t in texts[:20:3]] + ["", "!!"] + texts[5:8]
    want = near_duplicate_groups(texts, 0.5, 2, 64)
    for size in (1, 7, 25):
        keys, pos = [], []
        for start in range(0, len(texts), size):
            k, idx = band_keys(texts[start:start + size], 0.5, 2, 64, batch=3)
            keys.append(k)
            pos.append(idx + start)
        got = groups_from_bands(np.concatenate(keys), np.concatenate(pos), len(texts))
        assert (got == want).all()
    assert len(set(want.tolist())) < len(texts) - 5  # groups of 2+ exist


def test_partitioned_predict_equals_in_memory_predict(project: Project, tmp_path: Path) -> None:
    from tasks.evaluate.metrics import predict_batched
    from tasks.predict import accuracy_on_labels, run_predict
    from tests.support.fixtures import train_tiny
    from textloop.core.tables import write_table
    from textloop.pipeline.batch_predict import parquet_input_rows, predict_file
    from textloop.pipeline.models import load_classifier

    model = load_classifier(train_tiny(synthetic(80, 5), tmp_path / "model"))
    classes = [str(c) for c in model.classes_]
    data = corpus()[0].assign(n=np.arange(len(corpus()[0])))  # blank and labeled rows too
    data.loc[4, "text"] = None
    src = tmp_path / "in.parquet"
    data.to_parquet(src)
    assert parquet_input_rows(str(src), tmp_path / "o.csv") is None  # not Parquet -> whole
    assert parquet_input_rows(str(src), tmp_path / "o.parquet") == len(data)

    def score(texts: list[str]) -> np.ndarray:
        return predict_batched(model, texts, 16)

    p = project.params()
    want, counts = run_predict(pd.read_parquet(src), "text", classes, score, p.text, {}, "3")
    write_table(want, tmp_path / "whole.parquet")
    apply_overrides(project.params_path, {"backend.partition_rows": 7})
    got_counts, acc = predict_file(project, src, tmp_path / "parts.parquet", "text", "label",
                                   score, classes, {}, "3")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "parts.parquet"),
                                  pd.read_parquet(tmp_path / "whole.parquet"))
    assert got_counts == counts and counts["reasons"]["empty_text"] == 2
    assert acc == accuracy_on_labels(want, "label") and acc["rows"] > 90
