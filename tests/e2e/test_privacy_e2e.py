"""End to end erasure: a text that was served, fed back and trained on is forgotten; after the
next lifecycle run it is in no data version (raw, clean, labeled, shards, the new model's
training rows), and the erasure record names the version that was trained on it.

Slow (two real lifecycle runs through Prefect + DVC + MLflow); the in-process variant in
tests/e2e/test_privacy.py runs in the default suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from prefect.testing.utilities import prefect_test_harness

from tests.support.e2e_project import isolate_env, make_project, sample_csv
from textloop.core.text import normalize_text, text_hash


def _train_split_text(salt: str, fractions: float) -> str:
    """A text the hashed split puts into train (so the model really trains on it)."""
    from tasks.shard import bucket

    for i in range(1000):
        text = f"my seat {i} was broken and nobody from the crew cared, write me at jo{i}@example.com"
        if bucket(normalize_text(text), salt) >= fractions:
            return text
    raise AssertionError("no train text found")


def _served(project, text: str, model_dir: Path) -> str:
    """Serve `text` through the real app into the project's prediction log; its prediction id."""
    from fastapi.testclient import TestClient

    from tests.support import fixtures as testing
    from textloop.loop.retrain_policy import policy_db_url
    from textloop.pipeline.models import NormalizingClassifier
    from textloop.serve.app import create_app
    from textloop.serve.champion import ChampionWatcher, LoadedModel
    from textloop.serve.settings import ServeSettings

    testing.train_tiny(testing.synthetic(100, seed=5), model_dir)
    clf = NormalizingClassifier(model_dir)
    model = LoadedModel("served", "1", clf, tuple(clf.classes_))
    watcher = ChampionWatcher("served", resolver=lambda *_: ("1", None, {}),
                              loader=lambda *_: model)
    settings = ServeSettings(model_name="served", db_url=policy_db_url(project), token="t",
                             params=project.params())
    with TestClient(create_app(settings, watcher=watcher)) as client:
        return client.post("/predict", json={"text": text}).json()["predictions"][0]["id"]


def _hashes_in(root: Path, p) -> dict[str, set[str]]:
    """Text hashes of every data version the workspace holds now."""
    files = {"raw": [root / p.paths.raw], "clean": [root / p.paths.clean],
             "labeled": [root / p.paths.labeled],
             "shards": sorted((root / p.paths.shards).rglob("*.parquet"))}
    return {name: {text_hash(t) for f in fs for t in pd.read_parquet(f, columns=["text"])["text"]}
            for name, fs in files.items()}


@pytest.mark.slow
@pytest.mark.e2e
def test_forget_a_served_fed_back_trained_text(tmp_path, monkeypatch):
    from flows.lifecycle import lifecycle
    from tasks.deploy import row_hashes_per_row
    from textloop.core.layout import Project
    from textloop.loop import db
    from textloop.loop.feedback_actions import add_rows
    from textloop.loop.privacy import forget, targets
    from textloop.loop.retrain_policy import policy_db_url
    from textloop.pipeline.registry import downloaded, trained_rows

    root = make_project(tmp_path / "proj", "sample.csv", **{"optimize.n_trials": 0})
    sample_csv(root / "sample.csv", 240)
    isolate_env(monkeypatch, root)
    project = Project(root)
    p = project.params()
    secret = _train_split_text(p.shard.salt, p.shard.val_fraction + p.shard.test_fraction)
    h, row_hash = text_hash(secret), row_hashes_per_row([secret])
    pid = _served(project, secret, tmp_path / "served-model")
    add_rows(project, pd.DataFrame({"text": [secret], "label": ["negative"],
                                    "prediction_id": [pid]}), Path("api"), "feedback")
    with prefect_test_harness(server_startup_timeout=120):
        first = lifecycle(label_col="sentiment")
        assert first["state"] == "completed" and first["deploy"]["registered"]
        v1 = first["deploy"]["candidate_version"]
        assert all(h in hashes for hashes in _hashes_in(root, p).values())  # trained on it
        out = forget(project, targets(texts=[secret]))
        (record,) = out["erased"]
        assert record["predictions_removed"] == 1 and record["store_rows"] == 1
        assert [v["version"] for v in record["trained_versions"]] == [v1]
        second = lifecycle()
    assert second["state"] == "completed" and "ingest" in second["stages_run"]
    assert all(h not in hashes for hashes in _hashes_in(root, p).values())
    ingest = pd.read_json(root / p.paths.ingest_report, typ="series")
    assert ingest["erasure"]["rows_erased"] == 1
    assert ingest["erasure"]["rows_read"] == ingest["erasure"]["rows_kept"] + 1
    v2 = second["deploy"]["candidate_version"]
    assert second["deploy"]["registered"] and v2 != v1
    with downloaded(second["deploy"]["model_name"], v2) as local:
        assert not np.isin(row_hash, trained_rows(local)).any()
    with downloaded(second["deploy"]["model_name"], v1) as local:
        assert np.isin(row_hash, trained_rows(local)).all()  # the older version keeps it
    engine = db.open_db(policy_db_url(project))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.predictions)
                            .where(db.predictions.c.text_hash == h)).scalar() == 0
