"""Hostile input to the prediction API: lone surrogates, 10 MB texts, invisible texts, bodies of
any shape (property-based, every endpoint that takes input), the shared text-length policy, the
group-commit prediction log, and private state files."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import fixtures as testing
from textloop.core.config import Params, TextConfig
from textloop.core.errors import UserError
from textloop.core.limits import apply_text_limit, limit_frame
from textloop.loop import db
from textloop.serve.app import create_app
from textloop.serve.champion import ChampionWatcher, LoadedModel
from textloop.serve.settings import ServeSettings
from textloop.serve.validation import DETAIL_CHARS, PREVIEW_CHARS

TOKEN = "hardening"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = "z" * 10_000_000  # the 10 MB text of the issue
SURROGATE = "great film \ud83d"


class Fired:
    """What the stub retrain policy answers."""

    fire, flow_run_id, exported_rows, reasons, blocked = True, "run-1", 0, ["manual"], []


def _app(tmp: Path, overlong: str, durability: str = "commit"):
    """The real app with a tiny real model injected (no MLflow), 5 texts x 200 characters."""
    from textloop.pipeline.models import NormalizingClassifier

    folder = tmp / "model"
    if not folder.exists():
        testing.train_tiny(testing.synthetic(300, seed=1), folder)
    clf = NormalizingClassifier(folder)
    model = LoadedModel("hard", "1", clf, tuple(clf.classes_), clean=clf.meta.get("clean", {}))
    watcher = ChampionWatcher("hard", resolver=lambda *_: ("1", None, {}),
                              loader=lambda *_: model)
    params = Params.model_validate({"serve": {"max_texts": 5, "log_durability": durability},
                                    "text": {"max_chars": 200, "overlong": overlong}})
    settings_ = ServeSettings(model_name="hard", db_url=db.default_url(tmp / overlong),
                              token=TOKEN, params=params)
    return create_app(settings_, watcher=watcher, policy=lambda overrides: Fired)


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):
    """A server whose policy refuses overlong texts; yields (url, app)."""
    tmp = tmp_path_factory.mktemp("refuse")
    app = _app(tmp, "refuse")
    with testing.serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def truncating(tmp_path_factory):
    """A server whose policy truncates overlong texts; yields (url, app)."""
    tmp = tmp_path_factory.mktemp("truncate")
    app = _app(tmp, "truncate")
    with testing.serve_in_thread(app) as url:
        yield url, app


@pytest.fixture
def client(refusing):
    with httpx.Client(base_url=refusing[0], timeout=60) as c:
        yield c


def _post_raw(client: httpx.Client, path: str, body: str, **headers: str) -> httpx.Response:
    """POST a JSON text as written (json.dumps escapes a lone surrogate as \\udXXX)."""
    return client.post(path, content=body.encode("ascii"),
                       headers={"content-type": "application/json", **headers})


def _one_error(resp: httpx.Response) -> dict:
    """The single error of a 422 answer."""
    assert resp.status_code == 422, resp.text[:500]
    body = resp.json()
    assert body["errors_total"] == 1
    return body["detail"][0]


@pytest.mark.parametrize(("path", "body", "loc"), [
    ("/predict", {"text": SURROGATE}, ["body", "text"]),
    ("/predict", {"texts": ["fine", SURROGATE]}, ["body", "texts", 1]),
    ("/feedback", {"text": SURROGATE, "label": "pos"}, ["body", "items", 0, "text"]),
    ("/feedback", {"text": "ok", "label": "p\udc00s"}, ["body", "items", 0, "label"]),
])
def test_lone_surrogate_is_422_and_the_connection_stays(client, path, body, loc):
    resp = _post_raw(client, path, json.dumps(body), **AUTH)
    err = _one_error(resp)
    assert err["loc"] == loc and err["type"] == "string_unicode"
    assert "\\ud" in err["input"] or "\\udc00" in err["input"]  # escaped, never raw
    again = client.post("/predict", json={"text": "a great and wonderful film"})
    assert again.status_code == 200 and again.json()["predictions"][0]["label"] == "pos"


def test_ten_megabyte_text_is_refused_without_echo(client):
    resp = client.post("/predict", json={"text": BIG})
    assert len(resp.content) < 2000
    err = _one_error(resp)
    assert err["loc"] == ["body", "text"] and err["type"] == "text_too_long"
    assert "10000000 characters" in err["msg"] and "text.max_chars=200" in err["msg"]
    assert err["input"] == "z" * PREVIEW_CHARS + "… (10000000 characters)"
    fb = client.post("/feedback", headers=AUTH, json={"text": BIG, "label": "pos"})
    assert len(fb.content) < 2000 and _one_error(fb)["type"] == "text_too_long"


def test_ten_megabytes_in_a_field_name_or_an_override_key_are_not_echoed(client):
    unknown = client.post("/predict", json={"text": "ok", BIG: 1})
    assert unknown.status_code == 422 and len(unknown.content) < 2000
    retrain = client.post("/api/retrain", headers=AUTH, json={"overrides": {BIG: 1}})
    assert retrain.status_code == 422 and len(retrain.content) < 2000
    assert "unknown parameter" in retrain.json()["detail"]


def test_overlong_texts_are_truncated_flagged_and_logged_as_seen(truncating):
    url, app = truncating
    with httpx.Client(base_url=url, timeout=60) as c:
        resp = c.post("/predict", json={"texts": ["good fun", "great " * 40 + BIG]})
    assert resp.status_code == 200
    first, second = resp.json()["predictions"]
    assert (first["truncated"], second["truncated"]) == (False, True)
    assert second["label"] == "pos"  # the model saw the first 200 characters: "great great …"
    logged = db.texts_of_predictions(app.state.engine, [second["id"]])[second["id"]]
    assert logged == ("great " * 40)[:200]


@pytest.mark.parametrize("text", [
    "   ", "\t\n\r ", "\x00\x07\x1b",
    "\u200b",
])
def test_texts_empty_after_normalisation_are_422(client, text):
    err = _one_error(client.post("/predict", json={"text": text}))
    assert err["loc"] == ["body", "text"] and err["type"] == "empty_text"
    many = _one_error(client.post("/predict", json={"texts": ["good", text]}))
    assert many["loc"] == ["body", "texts", 1]
    fb = _one_error(client.post("/feedback", headers=AUTH, json={"text": text, "label": "neg"}))
    assert fb["loc"] == ["body", "items", 0, "text"]


def test_shared_length_policy_counts():
    texts = ["a" * 5, "b" * 6, "c" * 9, 7]
    cut = apply_text_limit(texts, TextConfig(max_chars=5, overlong="truncate"))
    assert cut.texts == ["aaaaa", "bbbbb", "ccccc", 7] and cut.truncated == [1, 2]
    assert cut.report() == {"policy": "truncate", "max_chars": 5, "texts": 4, "overlong": 2,
                            "truncated": 2, "refused": 0, "longest_overlong_chars": 9}
    refuse = apply_text_limit(texts, TextConfig(max_chars=5, overlong="refuse"))
    assert refuse.texts == texts and refuse.refused == [1, 2] and refuse.truncated == []


def test_ingest_applies_the_same_policy_and_counts_it():
    df = pd.DataFrame({"text": ["short", "x" * 100_000, None],
                       "origin": ["data.csv:1", "data.csv:2", "data.csv:3"]})
    out, report = limit_frame(df, TextConfig())  # defaults: 20,000 characters, truncate
    assert out["text"].map(lambda t: len(t) if isinstance(t, str) else 0).tolist() == [5, 20_000, 0]
    assert report == {"policy": "truncate", "max_chars": 20_000, "texts": 3, "overlong": 1,
                      "truncated": 1, "refused": 0, "longest_overlong_chars": 100_000}
    assert len(df["text"][1]) == 100_000  # the caller's frame is not modified
    with pytest.raises(UserError, match=r"^data\.csv:2, column 'text': text has 100000 "
                                        r"characters, more than text\.max_chars=20000"):
        limit_frame(df, TextConfig(overlong="refuse"))


def test_old_serve_max_chars_key_becomes_text_max_chars():
    params = Params.model_validate({"serve": {"max_chars": 300}})
    assert params.text.max_chars == 300 and params.text.overlong == "truncate"


# --- the prediction log: group commit -------------------------------------------------------

def _row(pid: str) -> dict:
    return {"id": pid, "created_at": db.utcnow(), "model_name": "m", "model_version": "1",
            "text_hash": "0" * 64, "text": "t", "label": "pos", "confidence": 0.9,
            "probas": {"pos": 0.9, "neg": 0.1}, "latency_ms": 1.0}


def test_group_commit_resolves_each_future_after_its_rows_are_stored(tmp_path):
    engine = db.open_db(db.default_url(tmp_path))
    plog = db.PredictionLog(engine, batch=50, durability="commit").start()
    futures: list = []
    lock = threading.Lock()

    def request(k: int) -> None:
        for j in range(25):
            fut = plog.put([_row(f"{k}-{j}-{n}") for n in range(1 + j % 3)])
            with lock:
                futures.append(fut)

    workers = [threading.Thread(target=request, args=(k,)) for k in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for fut in futures:
        assert fut.result(timeout=30) is None
    expected = 8 * sum(1 + j % 3 for j in range(25))  # 400 rows
    assert db.counts(engine)["predictions"] == plog.written == expected
    plog.stop()


def test_a_waiting_request_cancelled_does_not_stop_the_writer(tmp_path):
    import asyncio

    engine = db.open_db(db.default_url(tmp_path))
    plog = db.PredictionLog(engine, durability="commit")  # not started: the future stays open

    async def cancelled_request() -> None:
        task = asyncio.ensure_future(asyncio.wrap_future(plog.put([_row("c1")])))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_request())
    plog.start()
    assert plog.put([_row("c2")]).result(timeout=30) is None  # the writer is alive
    assert db.counts(engine)["predictions"] == 2  # the cancelled request's row is stored too
    plog.stop()


def test_async_durability_answers_first_and_writes_within_the_flush_window(tmp_path):
    engine = db.open_db(db.default_url(tmp_path))
    plog = db.PredictionLog(engine, batch=1000, flush_s=0.05, durability="async").start()
    futures = [plog.put([_row(f"a{i}")]) for i in range(30)]
    assert plog.flush(timeout=30)
    assert all(f.done() and f.exception() is None for f in futures)
    assert db.counts(engine)["predictions"] == plog.written == 30
    plog.stop()
    with pytest.raises(ValueError, match="durability"):
        db.PredictionLog(engine, durability="sometimes")


def test_a_failed_log_write_fails_its_requests_not_silently(tmp_path):
    engine = db.open_db(db.default_url(tmp_path))
    plog = db.PredictionLog(engine, durability="commit").start()
    assert plog.put([_row("same")]).result(timeout=30) is None
    with pytest.raises(db.LogWriteError):
        plog.put([_row("same")]).result(timeout=30)  # duplicate id: the insert fails
    assert (plog.written, plog.failed) == (1, 1)
    plog.stop()


def test_a_sequential_put_commits_before_it_returns(tmp_path):
    """commit durability on SQLite, writer idle: the caller's own thread commits its rows."""
    engine = db.open_db(db.default_url(tmp_path))
    plog = db.PredictionLog(engine, durability="commit").start()
    for n in range(3):
        assert plog.put([_row(f"s{n}")]).done()
        assert db.counts(engine)["predictions"] == plog.written == n + 1
    plog.stop()


def test_a_put_meeting_another_writers_lock_hands_its_rows_to_the_writer(tmp_path):
    """Another process holds SQLite's write lock: put returns at once with the rows queued (the
    caller, maybe the event loop, is not held), and they are committed once the lock is free."""
    import sqlite3

    engine = db.open_db(db.default_url(tmp_path))
    plog = db.PredictionLog(engine, durability="commit").start()
    other = sqlite3.connect(engine.url.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as a monitor or purge would hold it
    t0 = time.monotonic()
    fut = plog.put([_row("locked")])
    assert time.monotonic() - t0 < 5 and not fut.done()
    other.execute("COMMIT")
    assert fut.result(timeout=30) is None
    assert db.counts(engine)["predictions"] == plog.written == 1
    other.close()
    plog.stop()


def test_unloggable_prediction_is_503_not_an_answer(refusing, client, monkeypatch):
    plog = refusing[1].state.log
    def fail(rows, busy_ms=None):
        raise sa.exc.IntegrityError("insert", {}, Exception("refused"))  # not retried

    monkeypatch.setattr(plog, "_insert", fail)  # inline commit and writer both fail
    resp = client.post("/predict", json={"text": "a great film"})
    assert resp.status_code == 503 and "could not be logged" in resp.json()["detail"]


# --- private state ---------------------------------------------------------------------------

def test_state_folder_is_0700_and_the_prediction_db_0600(tmp_path, monkeypatch):
    from tests.support.e2e_project import isolate_env

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("paths: {state: .textloop}\n")
    old = os.umask(0o022)
    try:
        isolate_env(monkeypatch, tmp_path)  # configure(), every variable restored afterwards
        state = tmp_path / ".textloop"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        engine = db.open_db(db.default_url(state))
        with engine.begin() as conn:
            conn.execute(db.predictions.insert(), [_row("p1")])
        for name in ("serve.db", "serve.db-wal", "serve.db-shm"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        engine.dispose()
        (state / "serve.db").chmod(0o644)  # a database from before: narrowed at the next open
        db.open_db(db.default_url(state)).dispose()
        assert stat.S_IMODE((state / "serve.db").stat().st_mode) == 0o600
    finally:
        os.umask(old)


# --- property-based: any body to every endpoint that takes input -----------------------------

SPECIAL = ["", " ", "\u200b", "\ud83d", "\udfff x", "pos", "neg", "\x00", "z" * 5000,
           "optimize.n_trials", "train.model", "0" * 32]
any_text = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(SPECIAL)
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | any_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(any_text, inner, max_size=5), max_leaves=15)
predict_bodies = st.fixed_dictionaries({}, optional={
    "text": any_text | json_values, "texts": st.lists(any_text, max_size=7) | json_values,
    "extra": json_values}) | json_values
item = st.fixed_dictionaries({}, optional={"text": any_text, "label": any_text,
                                           "prediction_id": any_text, "x": json_values})
feedback_bodies = (item | st.fixed_dictionaries({"items": st.lists(item, max_size=7)})
                   | json_values)
retrain_bodies = st.fixed_dictionaries({}, optional={
    "overrides": st.dictionaries(any_text, json_values, max_size=4)}) | json_values
ALLOWED = {"/predict": {200, 422}, "/feedback": {200, 404, 422},
           "/api/retrain": {200, 409, 422}}


def _encode(body: object) -> bytes:
    """JSON as a client writes it; lone surrogates become \\udXXX escapes (valid JSON)."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


def _check(resp: httpx.Response, allowed: set[int]) -> None:
    """A known status, a JSON body, and no long piece of the input repeated back."""
    assert resp.status_code in allowed, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/json")
    resp.json()
    # a value is previewed in <= PREVIEW_CHARS, a detail quoting input cut at DETAIL_CHARS
    assert "z" * (DETAIL_CHARS + 1) not in resp.text and len(resp.content) < 16_000


PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@PROPERTY
@given(path=st.sampled_from(sorted(ALLOWED)), data=st.data())
def test_any_json_body_gets_a_short_json_answer(client, path, data):
    bodies = {"/predict": predict_bodies, "/feedback": feedback_bodies,
              "/api/retrain": retrain_bodies}[path]
    body = data.draw(bodies)
    resp = client.post(path, content=_encode(body),
                       headers={"content-type": "application/json", **AUTH})
    _check(resp, ALLOWED[path])


@PROPERTY
@given(path=st.sampled_from(sorted(ALLOWED)), raw=st.binary(max_size=300))
def test_any_bytes_get_a_short_json_answer(client, path, raw):
    resp = client.post(path, content=raw, headers={"content-type": "application/json", **AUTH})
    _check(resp, ALLOWED[path] | {400})


@PROPERTY
@given(run_id=any_text.filter(lambda s: s and "/" not in s))  # "", "/": other routes
def test_any_run_id_gets_a_json_answer(client, run_id):
    resp = client.get("/api/runs/" + urllib.parse.quote(run_id.encode("utf-8", "surrogatepass"),
                                                        safe=""))
    _check(resp, {404, 422, 503})


def test_server_is_healthy_after_the_hostile_input(client):
    for path in ("/health", "/model"):
        assert client.get(path).status_code == 200
    resp = client.post("/predict", json={"texts": ["great fun", "awful boring"]})
    assert [p["label"] for p in resp.json()["predictions"]] == ["pos", "neg"]


def test_probabilities_are_finite_for_every_answer(client):
    resp = client.post("/predict", json={"texts": ["x", "great", "\u00e9\u00e8", "12345", "!"]})
    probs = np.array([list(p["probabilities"].values()) for p in resp.json()["predictions"]])
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0)
