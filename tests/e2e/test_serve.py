"""The prediction API through a real uvicorn server on 127.0.0.1: predict, limits, feedback,
the prediction log, auth, hot reload without failed requests, migrations."""

from __future__ import annotations

import os
import stat
import threading
import time

import httpx
import pytest
import sqlalchemy as sa

from tests.support import fixtures as testing
from textloop.core.config import Params
from textloop.loop import db
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings, resolve_token

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "tiny-serve"


def _params(**serve: object) -> Params:
    """Params with small limits (overlong texts refused) and a fast alias poll."""
    return Params.model_validate({"serve": {"max_texts": 5, "poll_s": 0.1, "log_flush_s": 0.05,
                                            **serve},
                                  "text": {"max_chars": 200, "overlong": "refuse"}})


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A sandboxed MLflow registry with v1 of a tiny model as champion."""
    tmp = tmp_path_factory.mktemp("serve")
    with testing.mlflow_sandbox(tmp / "mlflow"):
        folder = testing.train_tiny(testing.synthetic(300, seed=1), tmp / "m1")
        testing.register_champion(folder, MODEL, {"gate_metric": "accuracy",
                                                  "test_accuracy": "0.91",
                                                  "test_accuracy_ci": "0.88,0.94"})
        yield tmp


@pytest.fixture(scope="module")
def server(registry):
    """The API on an ephemeral loopback port; yields (base_url, app)."""
    settings = ServeSettings(model_name=MODEL, db_url=db.default_url(registry), token=TOKEN,
                             params=_params())
    app = create_app(settings)
    with testing.serve_in_thread(app) as url:
        yield url, app


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def test_predict_one_and_many(client):
    one = client.post("/predict", json={"text": "a great and wonderful film"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model"] == {"name": MODEL, "version": "1"}
    (pred,) = body["predictions"]
    assert pred["label"] == "pos" and len(pred["id"]) == 32
    assert set(pred["probabilities"]) == {"neg", "pos"}
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0)
    assert pred["confidence"] == max(pred["probabilities"].values())
    many = client.post("/predict", json={"texts": ["terrible boring plot", "great fun"]}).json()
    assert [p["label"] for p in many["predictions"]] == ["neg", "pos"]
    assert len({p["id"] for p in many["predictions"]}) == 2


@pytest.mark.parametrize("body", [
    {"texts": ["x"] * 6},                      # more than max_texts (5)
    {"text": "y" * 201},                       # longer than text.max_chars (200)
    {"text": ""},                              # empty text
    {"texts": []},                             # empty list
    {"text": "a", "texts": ["b"]},             # both forms
    {"txt": "typo"},                           # unknown field
])
def test_invalid_predict_bodies_are_422_json(client, body):
    resp = client.post("/predict", json=body)
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["detail"]


def test_malformed_json_is_422(client):
    resp = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


def test_feedback_requires_the_bearer_token(client):
    pid = client.post("/predict", json={"text": "good"}).json()["predictions"][0]["id"]
    assert client.post("/feedback", json={"prediction_id": pid, "label": "neg"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/feedback", json={"prediction_id": pid, "label": "neg"},
                       headers=wrong).status_code == 401


def test_feedback_by_id_and_by_text(client, server):
    pid = client.post("/predict", json={"text": "dull weak acting"}).json()["predictions"][0]["id"]
    # posted at once: the prediction may still be queued in the log writer; it must be found
    resp = client.post("/feedback", headers=AUTH, json={"items": [
        {"prediction_id": pid, "label": "neg"}, {"text": "a brand new text", "label": "pos"}]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"stored": 2}
    engine = server[1].state.engine
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.feedback).order_by(db.feedback.c.id.desc())
                            .limit(2)).mappings().all()
    by_text = {r["text"]: r for r in rows}
    assert by_text["dull weak acting"]["prediction_id"] == pid
    assert by_text["a brand new text"]["label"] == "pos"
    assert all(r["exported_at"] is None for r in rows)


def test_feedback_rejects_unknown_ids_and_labels(client):
    assert client.post("/feedback", headers=AUTH,
                       json={"prediction_id": "0" * 32, "label": "pos"}).status_code == 404
    resp = client.post("/feedback", headers=AUTH, json={"text": "x", "label": "maybe"})
    assert resp.status_code == 422 and "unknown label" in resp.json()["detail"]
    both = client.post("/feedback", headers=AUTH,
                       json={"text": "x", "prediction_id": "1", "label": "pos"})
    assert both.status_code == 422


def test_feedback_label_is_spelled_as_a_feedback_file_spells_it(client, server):
    """A label with a trailing space is the label, as `textloop feedback add` reads it (the API
    used to answer 422 for what the file path stores)."""
    resp = client.post("/feedback", headers=AUTH, json={"text": "what a match", "label": "pos "})
    assert resp.status_code == 200, resp.text
    with server[1].state.engine.connect() as conn:
        row = conn.execute(sa.select(db.feedback).where(db.feedback.c.text == "what a match")
                           ).mappings().one()
    assert row["label"] == "pos"
    resp = client.post("/feedback", headers=AUTH, json={"text": "a fine match", "label": "Pos"})
    assert resp.status_code == 200, resp.text  # as `feedback add` maps it: one rule, not two
    with server[1].state.engine.connect() as conn:
        assert conn.execute(sa.select(db.feedback.c.label).where(
            db.feedback.c.text == "a fine match")).scalar_one() == "pos"


def test_a_prediction_log_held_locked_answers_503_within_the_bound(registry, tmp_path):
    """Another process holding serve.db in an exclusive transaction used to hold /predict for
    minutes (five 30 s attempts) with /health saying ok: now 503 within backend.db_lock_wait_s,
    /health degraded with the reason, and the row still written once the lock goes."""
    import sqlite3

    from textloop.core.layout import StateLayout

    params = Params.model_validate({**_params().model_dump(), "backend": {"db_lock_wait_s": 1.0}})
    state = tmp_path / "state"
    settings = ServeSettings(model_name=MODEL, db_url=db.default_url(state), token=TOKEN,
                             params=params)
    app = create_app(settings)
    with testing.serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/predict", json={"text": "great game"}).status_code == 200
        holder = sqlite3.connect(StateLayout(state.resolve()).serve_db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            t0 = time.monotonic()
            resp = c.post("/predict", json={"text": "great game"})
            assert resp.status_code == 503, resp.text
            assert "did not commit within 1 s (backend.db_lock_wait_s" in resp.json()["detail"]
            assert time.monotonic() - t0 < 10
            deadline = time.monotonic() + 30
            while app.state.log.stalled_for() <= 1.0 and time.monotonic() < deadline:
                time.sleep(0.05)  # bounded polling: the writer is waiting on the lock
            health = c.get("/health").json()
            assert health["status"] == "degraded"
            assert health["reason"].startswith("prediction log: a write has waited")
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert app.state.log.flush(60)
        assert c.get("/health").json()["status"] == "ok"
        assert db.counts(app.state.engine)["predictions"] == 2  # the unanswered one is logged
        assert c.post("/predict", json={"text": "great game"}).status_code == 200


def test_prediction_log_holds_every_answer(client, server):
    app = server[1]
    app.state.log.flush()
    before = db.counts(app.state.engine)["predictions"]
    answered = 0
    for i in range(20):
        texts = [f"great film number {i}", "awful"][: 1 + i % 2]
        resp = client.post("/predict", json={"texts": texts})
        assert resp.status_code == 200
        answered += len(resp.json()["predictions"])
    assert app.state.log.flush()
    assert db.counts(app.state.engine)["predictions"] - before == answered
    row = db.read_predictions(app.state.engine, 1).iloc[0]
    assert row["model_version"] == "1" and len(row["text_hash"]) == 64
    assert row["latency_ms"] > 0 and set(row["probas"]) == {"neg", "pos"}


def test_health_and_model(client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["model_version"] == "1"
    info = client.get("/model").json()
    assert info["version"] == "1" and info["classes"] == ["neg", "pos"]
    assert info["tags"]["test_accuracy"] == "0.91"


def test_dashboard_renders_champion_and_versions(client):
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert 'id="champion-version">v1<' in page.text
    assert "<svg" in page.text and "Retrain" in page.text
    assert "[0.8800, 0.9400]" in page.text  # the evidence block: the CI from the tags
    assert client.get("/api/evidence").json()["accuracy_ci"] == [0.88, 0.94]
    assert client.get("/", follow_redirects=True).url.path == "/dashboard"


def test_migrations_are_at_head_and_match_the_tables(server):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    engine = server[1].state.engine
    head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()
    assert db.current_revision(engine) == head
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_hot_reload_swaps_version_without_failed_requests(registry, client, server):
    """Move the alias while a client keeps predicting: every request answers 200, v1 then v2."""
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server[0], timeout=30) as c:
            while not stop.is_set():
                r = c.post("/predict", json={"text": "great fun"})
                seen.append((r.status_code, r.json().get("model", {}).get("version")))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        folder = testing.train_tiny(testing.synthetic(300, seed=2), registry / "m2")
        version = testing.register_champion(folder, MODEL, {"gate_metric": "accuracy"})
        _wait_for(lambda: client.get("/model").json()["version"] == version, 60)
        n_after = len(seen)
        _wait_for(lambda: len(seen) > n_after + 20, 30)
    finally:
        stop.set()
        worker.join(30)
    versions = [v for _, v in seen]
    assert all(code == 200 for code, _ in seen), {c for c, _ in seen}
    assert versions[0] == "1" and versions[-1] == version
    switch = versions.index(version)
    assert set(versions[switch:]) == {version}  # never back to the old version


def test_no_champion_means_503_until_one_appears(registry):
    settings = ServeSettings(model_name="not-yet", db_url=db.default_url(registry / "other"),
                             token=TOKEN, params=_params())
    with testing.serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url) as c:
        assert c.get("/health").status_code == 503
        assert c.post("/predict", json={"text": "x"}).status_code == 503
        folder = testing.train_tiny(testing.synthetic(200, seed=3), registry / "m3")
        testing.register_champion(folder, "not-yet")
        _wait_for(lambda: c.get("/health").status_code == 200, 60)
        assert c.post("/predict", json={"text": "x"}).json()["model"]["version"] == "1"


def test_token_comes_from_env_or_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_TEST_TOKEN", raising=False)
    first = resolve_token("TL_TEST_TOKEN", tmp_path)
    assert len(first) >= 32 and resolve_token("TL_TEST_TOKEN", tmp_path) == first
    assert stat.S_IMODE(os.stat(tmp_path / "api-token").st_mode) == 0o600
    monkeypatch.setenv("TL_TEST_TOKEN", "from-env")
    assert resolve_token("TL_TEST_TOKEN", tmp_path) == "from-env"


def _wait_for(check, timeout_s: float) -> None:
    """Poll `check` until true or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.05)


def test_retrain_endpoint_checks_token_overrides_and_policy(registry, monkeypatch):
    calls = []

    class Fired:
        fire, flow_run_id, exported_rows, reasons, blocked = True, "run-123", 4, ["manual"], []

    def policy(overrides):
        calls.append(overrides)
        return Fired

    settings = ServeSettings(model_name=MODEL, db_url=db.default_url(registry / "retrain"),
                             token=TOKEN, params=_params())
    with testing.serve_in_thread(create_app(settings, policy=policy)) as url, \
            httpx.Client(base_url=url) as c:
        assert c.post("/api/retrain", json={}).status_code == 401
        bad = c.post("/api/retrain", headers=AUTH, json={"overrides": {"train.nope": 1}})
        assert bad.status_code == 422
        invalid = c.post("/api/retrain", headers=AUTH, json={"overrides": {"train.model": "x"}})
        assert invalid.status_code == 422
        ok = c.post("/api/retrain", headers=AUTH, json={"overrides": {"optimize.n_trials": 0}})
        assert ok.status_code == 200 and ok.json()["flow_run_id"] == "run-123"
        assert calls == [{"optimize.n_trials": 0}]
        Fired.fire, Fired.blocked = False, ["single-flight: lifecycle run r1 is still in flight"]
        busy = c.post("/api/retrain", headers=AUTH, json={})
        assert busy.status_code == 409 and "single-flight" in busy.json()["detail"]
