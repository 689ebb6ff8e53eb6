"""Each stage's plan, run by the executor over several partitions, writes what it writes over one
frame: the same Parquet frames, the same queue CSV and shard files byte for byte, the same
report, on small frames whose duplicates, conflicts, near-duplicates and test rows sit in
different partitions (partitions of 4 rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import raw_frame
from tests.support.fixtures import synthetic
from textloop.core.layout import Project
from textloop.pipeline.executor import CsvOut, ParquetOut, StreamOut, run_plan


def _project(root: Path, partitioned: bool, scheduler: str = "synchronous") -> Project:
    """A bare project whose textloop.yaml picks the path (partitions of 4 rows, or one frame)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("{}\n")
    (root / "textloop.yaml").write_text(
        f"backend:\n  partitioned: {str(partitioned).lower()}\n  partition_rows: 4\n"
        f"  dask_scheduler: {scheduler}\n")
    return Project(root)


def _raw() -> pd.DataFrame:
    """Raw rows with planted faults far apart: duplicates, a conflict, an empty text, a
    feedback correction, an unlabeled copy, a repeated test row."""
    rows = [(t, lbl, 0.9, "data", "data") for t, lbl in synthetic(14, 1).itertuples(index=False)]
    rows += [("<b>" + rows[2][0] + "</b>", rows[2][1], 0.9, "data", "data"),  # dupe of 2
             (rows[5][0], "neg" if rows[5][1] == "pos" else "pos", 0.9, "data", "data"),
             ("   ", "pos", 0.9, "data", "data"),                           # empty_text
             (rows[8][0], None, None, "data", "data"),                      # unlabeled copy
             (rows[11][0], "neg", 1.0, "feedback", "data"),                 # a correction
             ("the held out review", "pos", None, "data", "test"),
             ("the held out review", "pos", None, "data", "test")]
    return raw_frame(rows)


def _clean_input() -> pd.DataFrame:
    """Clean-stage rows for label: trusted, unlabeled, low-confidence, missing confidence."""
    df = raw_frame([(t, lbl, 0.9, "data", "data")
                    for t, lbl in synthetic(13, 2).itertuples(index=False)])
    df.loc[[1, 9], "label"] = None
    df.loc[[4, 10], "confidence"] = 0.1
    df.loc[[6], "confidence"] = None
    return df


def _labeled_input() -> pd.DataFrame:
    """Labeled rows for shard: near-duplicates in other partitions, explicit test rows, one
    exact copy of a test text, a rating in some rows."""
    texts = synthetic(30, 3)
    rows = [(t, lbl, 0.9, "data", "data") for t, lbl in texts.itertuples(index=False)]
    rows += [(rows[3][0] + " indeed", rows[3][1], 0.9, "data", "data"),
             (rows[20][0], rows[20][1], None, "data", "test"),
             (rows[25][0] + " really", rows[25][1], None, "data", "test")]
    df = raw_frame(rows)
    df["rating"] = np.where(np.arange(len(df)) % 3 == 0, 7.0, np.nan)
    return df.assign(label_origin="gold")


def _outputs(folder: Path) -> dict[str, object]:
    """Every file under `folder`: Parquet files as frames, anything else as bytes."""
    return {str(f.relative_to(folder)): pd.read_parquet(f) if f.suffix == ".parquet"
            else f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _run(stage: str, frame: pd.DataFrame, root: Path, partitioned: bool,
         scheduler: str = "synchronous") -> tuple[dict, dict]:
    """The stage's plan on `frame` through the executor; its report and written files."""
    from tasks.clean.clean_parts import CLEAN_PLAN
    from tasks.label.trust_plan import TRUST_PLAN
    from tasks.shard.shard_parts import SHARD_PLAN, write_shard_stream
    from textloop.core.config import Params

    project = _project(root, partitioned, scheduler)
    source = root / "input.parquet"
    frame.to_parquet(source, row_group_size=4)
    out, p = root / "out", Params()
    if stage == "clean":
        plan, cfg = CLEAN_PLAN, p.clean
        sinks = {"kept": ParquetOut(out / "clean.parquet"), "quarantine": ParquetOut(out / "q.parquet")}
    elif stage == "label":
        plan, cfg = TRUST_PLAN, p.label
        sinks = {"labeled": ParquetOut(out / "labeled.parquet"), "queue": CsvOut(out / "queue.csv")}
    else:
        plan, cfg = SHARD_PLAN, p.shard.model_copy(update={"rows_per_shard": 5})
        cfg.near_duplicates.threshold, cfg.near_duplicates.shingle_words = 0.5, 2
        sinks = {"assigned": StreamOut(lambda fs: write_shard_stream(fs, out / "shards", 5)),
                 "quarantine": ParquetOut(out / "q.parquet")}
    report = run_plan(plan, cfg, source, sinks, project, stage)
    return report, _outputs(out)


def _assert_same(whole: dict, parts: dict) -> None:
    assert whole.keys() == parts.keys()
    for name, value in whole.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, parts[name], obj=name)
        else:
            assert value == parts[name], name


@pytest.mark.parametrize(("stage", "frame"), [("clean", _raw), ("label", _clean_input),
                                              ("shard", _labeled_input)])
def test_a_stage_over_partitions_writes_what_it_writes_over_one_frame(tmp_path, stage, frame):
    whole_report, whole = _run(stage, frame(), tmp_path / "whole", partitioned=False)
    parts_report, parts = _run(stage, frame(), tmp_path / "parts", partitioned=True)
    assert parts_report == whole_report
    _assert_same(whole, parts)
    scratch = tmp_path / "parts" / ".textloop" / "partitions"
    assert scratch.is_dir() and not (scratch / stage).exists()  # part files used, then removed
    assert not (tmp_path / "whole" / ".textloop" / "partitions").exists()
    if stage == "clean":  # every rule fired, so the equality is not vacuous
        assert set(whole_report["quarantined_by_reason"]) == {
            "duplicate_text", "conflicting_labels", "empty_text", "superseded_by_feedback"}
        assert whole_report["test_duplicates_kept"] == 1
    elif stage == "label":
        assert whole_report["queued_by_reason"] == {"no_label": 2, "low_confidence": 2}
    else:
        assert set(whole["q.parquet"]["reason"]) == {"overlaps_test_set", "near_duplicate_of_test"}
        assert whole_report["near_duplicates"]["groups"] >= 1
        assert "rating" in whole["shards/train/part-00000.parquet"]


def test_partitions_run_in_worker_processes_with_the_same_result(tmp_path):
    whole_report, whole = _run("clean", _raw(), tmp_path / "whole", partitioned=False)
    parts_report, parts = _run("clean", _raw(), tmp_path / "parts", partitioned=True,
                               scheduler="processes")
    assert parts_report == whole_report
    _assert_same(whole, parts)
