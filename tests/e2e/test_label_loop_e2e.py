"""The whole labeling loop on a small sample: unlabeled rows -> `label next` ->
answers through the API -> export -> retrain -> the new version's training data holds the
answers (by their row ids, and the DVC hash of the store the run ingested)."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from prefect.testing.utilities import prefect_test_harness

from tests.support.e2e_project import isolate_env, make_project, sample_csv

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]


def test_unlabeled_rows_to_labels_to_a_new_version(tmp_path, monkeypatch):
    from flows.lifecycle import lifecycle
    from tasks.feedback import read_store
    from textloop.core.layout import Project
    from textloop.loop.active_queue import next_batch
    from textloop.pipeline.registry import version_tags
    from textloop.pipeline.status import status
    from textloop.serve.app import create_app
    from textloop.serve.settings import from_project

    root = make_project(tmp_path / "proj", "sample.csv")
    truth = pd.read_csv(sample_csv(root / "sample.csv", 450))
    hidden = truth.sample(60, random_state=1).index
    truth.assign(sentiment=truth["sentiment"].where(~truth.index.isin(hidden))).to_csv(
        root / "sample.csv", index=False, lineterminator="\r\n")
    isolate_env(monkeypatch, root)
    project = Project(root)
    with prefect_test_harness(server_startup_timeout=120):
        assert lifecycle(label_col="sentiment")["deploy"]["version"] == "1"
        queued_before = json.loads((root / "metrics/label.json").read_text())["rows_queued"]
        assert queued_before >= 60  # the hidden rows (+ rows below label.min_confidence)
        queue = next_batch(project, 12)
        assert len(queue) == 12 and set(queue["origin"]) == {"pool"}
        assert queue["score"].astype(float).is_monotonic_decreasing
        answer_of = dict(zip(truth["text"].map(_norm), truth["sentiment"]))
        settings = from_project(project)
        auth = {"Authorization": f"Bearer {settings.token}"}
        with TestClient(create_app(settings)) as client:
            for item_id, text in zip(queue["item_id"], queue["text"]):
                got = client.post("/api/label/answer", headers=auth, json={
                    "annotator": "ann", "item_id": item_id, "label": answer_of[_norm(text)]})
                assert got.status_code == 200 and got.json()["answer"]["status"] == "agreed"
            exported = client.post("/api/label/export", headers=auth).json()
        assert exported["rows"] == 12
        store = read_store(project.path(project.params().paths.feedback))
        ids = {f"feedback:{i}" for i in store["feedback_id"]}
        second = lifecycle()
    assert "ingest" in second["stages_run"] and second["deploy"]["registered"]
    assert str(second["deploy"]["candidate_version"]) == "2"
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    store_md5 = yaml.safe_load((root / "data/07_feedback.dvc").read_text())["outs"][0]["md5"]
    ingest_deps = {d["path"]: d["md5"] for d in lock["stages"]["ingest"]["deps"]}
    assert ingest_deps["data/07_feedback"] == store_md5  # the run ingested this store version
    shards = pd.concat(pd.read_parquet(p).assign(split=p.parent.name)
                       for p in (root / "data/04_shards").glob("*/*.parquet"))
    learned = shards[shards["row_id"].isin(ids)]
    assert len(learned) == 12  # every answer is a row of the new version's data, by its id
    assert dict(zip(learned["text"], learned["label"])) == {
        t: answer_of[_norm(t)] for t in learned["text"]}
    assert (learned["split"] == "train").any()
    tags = dict(version_tags(project, second["deploy"]["model_name"]))["2"]
    assert int(tags["train_rows"]) == int((shards["split"] == "train").sum())
    info = status(project)  # what `textloop status` prints: counts and the learning curve
    assert [p["version"] for p in info["learning_curve"]] == ["1", "2"]
    assert info["learning_curve"][1]["labeled_rows"] == int(tags["train_rows"])
    report = json.loads((root / "metrics/label.json").read_text())
    assert info["label_counts"]["labeled"] == report["rows_trusted"]
    # the answered rows left the queue: their feedback rows superseded the unlabeled copies
    assert info["label_counts"]["queued"] == report["rows_queued"] == queued_before - 12
    assert info["label_counts"]["active_queue"] == 12


def _norm(text: str) -> str:
    """The key answers are looked up by: the normalised text's hash."""
    from textloop.core.text import normalize_text

    return hashlib.sha256(normalize_text(str(text)).encode()).hexdigest()
