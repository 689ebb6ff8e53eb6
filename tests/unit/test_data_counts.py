"""The run summary's data line gathers the ingest, clean, label and split reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from textloop.core.layout import Project
from textloop.pipeline.data_counts import data_counts, data_line

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report), encoding="utf-8")


def test_data_counts_gather_rows_read_quarantine_reasons_unlabeled_and_split_sizes(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "textloop.yaml", tmp_path / "textloop.yaml")
    project = Project(tmp_path)
    assert data_line(data_counts(project)) == "unknown (no ingest report)"
    paths = project.params().paths
    _write(project.path(paths.ingest_report), {"rows": 308, "rows_unlabeled": 1})
    _write(project.path(paths.clean_report),
           {"rows_in": 308, "rows_out": 255, "rows_quarantined": 53,
            "quarantined_by_reason": {"duplicate_text": 52, "empty_text": 1}})
    _write(project.path(paths.label_report), {"rows_in": 255, "rows_quarantined": 0})
    _write(project.path(paths.split_report), {
        "near_duplicates": {"rows_quarantined_near_duplicate_of_test": 2},
        "splits": {"train": {"rows": 222}, "val": {"rows": 19}, "test": {"rows": 13}}})
    counts = data_counts(project)
    assert counts == {"rows_read": 308, "unlabeled": 1,
                      "quarantined": {"duplicate_text": 52, "empty_text": 1,
                                      "near_duplicate_of_test": 2},
                      "splits": {"train": 222, "val": 19, "test": 13}}
    assert data_line(counts) == ("read 308 rows; quarantined 55 (duplicate_text 52, empty_text 1, "
                                 "near_duplicate_of_test 2); unlabeled 1; train 222, val 19, "
                                 "test 13")
