"""Two annotators answering one /label item at the same instant: one settles it, the other is
told what won. Real concurrent requests against a real uvicorn server, released by a barrier."""

from __future__ import annotations

import threading

import httpx
import pandas as pd

from tasks.feedback import append_batch, read_store
from tests.support import fixtures as testing
from tests.support.fixtures import StubWatcher
from textloop.core.config import Params
from textloop.loop import db
from textloop.loop.active_queue import QUEUE_COLUMNS, text_hash, write_queue
from textloop.loop.retrain_policy import export_feedback
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings

TOKEN = "race-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAIRS = 8



def _queue(root, n: int) -> list[str]:
    """An active queue of n pool items; returns their ids."""
    texts = [f"queued text number {i}" for i in range(n)]
    rows = pd.DataFrame({
        "rank": [str(i) for i in range(n)], "item_id": [f"pool:r{i}" for i in range(n)],
        "origin": ["pool"] * n, "text": texts, "guess": ["pos"] * n, "confidence": ["0.5"] * n,
        "score": ["0.5"] * n, "strategy": ["uncertainty"] * n,
        "row_id": [f"r{i}" for i in range(n)], "prediction_id": [""] * n,
        "reason": ["no_label"] * n, "text_hash": [text_hash(t) for t in texts],
        "task": ["m"] * n})[QUEUE_COLUMNS]
    write_queue(root / Params().paths.active_queue, rows)
    return rows["item_id"].tolist()


def _together(url: str, item_id: str) -> list[httpx.Response]:
    """ana says pos, bo says neg, both requests released by one barrier."""
    barrier = threading.Barrier(2)
    out: dict[str, httpx.Response] = {}

    def send(annotator: str, label: str) -> None:
        with httpx.Client(timeout=60) as http:
            body = {"annotator": annotator, "item_id": item_id, "label": label}
            barrier.wait()
            out[annotator] = http.post(f"{url}/api/label/answer", json=body, headers=AUTH)

    threads = [threading.Thread(target=send, args=a) for a in (("ana", "pos"), ("bo", "neg"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [out["ana"], out["bo"]]


def test_two_annotators_on_one_item_never_both_settle_it(tmp_path) -> None:
    items = _queue(tmp_path, PAIRS)
    settings = ServeSettings(model_name="m", db_url=f"sqlite:///{tmp_path / 'serve.db'}",
                             token=TOKEN, params=Params(), project_root=tmp_path,
                             state=tmp_path / ".textloop")
    app = create_app(settings, watcher=StubWatcher())
    with testing.serve_in_thread(app) as url:
        for item_id in items:
            ana, bo = _together(url, item_id)
            codes = sorted((ana.status_code, bo.status_code))
            assert codes == [200, 409], (item_id, ana.text, bo.text)
            won, lost = (ana, bo) if ana.status_code == 200 else (bo, ana)
            assert won.json()["answer"]["status"] == "agreed"
            winner = "ana" if won is ana else "bo"
            assert winner in lost.json()["detail"] and "agreed" in lost.json()["detail"]
    engine = app.state.engine
    with engine.connect() as conn:
        stored = pd.DataFrame(conn.execute(db.feedback.select()).mappings().all())
        answers = pd.DataFrame(conn.execute(db.label_answers.select()).mappings().all())
    assert len(stored) == PAIRS and stored["text"].is_unique  # one row per item, never two
    assert len(answers) == PAIRS and answers["item_id"].is_unique
    assert (answers["status"] == "agreed").sum() == PAIRS  # never two agreed on one item
    n, _ = export_feedback(engine, lambda rows: append_batch(tmp_path / "store", rows, "serve"))
    exported = read_store(tmp_path / "store")
    assert n == PAIRS and exported["text"].is_unique
    assert dict(zip(exported["text"], exported["label"])) == dict(
        zip(stored["text"], stored["label"]))
