"""Shadow challenger: two versions served, both predictions logged for the same request ids,
the response never waits for the challenger, the policy promotes a better challenger on a
replay and retires a worse one, every decision recorded."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pandas as pd
import pytest

from tasks.deploy import GateDecision
from tasks.monitor.shadow_rule import compare, decide
from tests.support import fixtures as testing
from textloop.core.config import Params, ShadowConfig
from textloop.loop import db
from textloop.loop.shadow_decisions import run_shadow_policy
from textloop.serve.app import create_app
from textloop.serve.champion import ChampionWatcher, LoadedModel
from textloop.serve.settings import ServeSettings

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "tiny-shadow"


def _params(**shadow) -> Params:
    return Params.model_validate({
        "deploy": {"mode": "shadow"}, "serve": {"poll_s": 0.1},
        "shadow": {"min_requests": 50, "min_feedback": 50, **shadow}})


def test_gate_decision_in_shadow_mode_keeps_the_champion_live():
    d = GateDecision(outcome="promoted", metric="accuracy", candidate_score=0.9,
                     champion_score=0.8, champion_version="1", candidate_version="2",
                     n_compared=100, alias="challenger")
    assert d.shadowed and d.live_version == "1"
    assert d.reason.startswith("passed the gate, set as challenger (deploy.mode shadow)")
    assert d.summary("m")["model"] == "m v1 (candidate v2 challenger)"


def _pairs(champ_right: list[bool], chal_right: list[bool]) -> pd.DataFrame:
    truth = ["pos"] * len(champ_right)
    return pd.DataFrame({
        "champion_label": ["pos" if r else "neg" for r in champ_right],
        "champion_confidence": 0.8, "challenger_confidence": 0.7,
        "challenger_label": ["pos" if r else "neg" for r in chal_right], "true_label": truth})


def test_compare_counts_discordant_pairs_and_mcnemar():
    cmp = compare(_pairs([True] * 30 + [False] * 10, [True] * 20 + [False] * 10 + [True] * 10))
    assert (cmp.n_paired, cmp.n_feedback) == (40, 40)
    assert (cmp.only_champion_right, cmp.only_challenger_right) == (10, 10)
    assert cmp.champion_accuracy == cmp.challenger_accuracy == 0.75
    assert cmp.agreement == 0.5 and cmp.mcnemar_p == pytest.approx(1.0)
    assert cmp.confidence_shift == pytest.approx(-0.1)
    cfg = ShadowConfig(min_requests=40, min_feedback=40)
    assert decide(cmp, cfg)[0] == "promote"
    worse = compare(_pairs([True] * 40, [True] * 25 + [False] * 15))
    action, reason = decide(worse, cfg)
    assert action == "retire" and "significantly worse" in reason and "b=15, c=0" in reason
    assert decide(cmp, ShadowConfig(min_requests=41, min_feedback=1))[0] == "wait"


def _sleepy_loader(delay: float):
    """A challenger whose scoring takes `delay` seconds per request (always says 'pos')."""
    class Slow:
        classes_ = ("neg", "pos")

        def predict_proba(self, texts):
            time.sleep(delay)  # simulates a slow model, not synchronisation
            return np.tile([0.1, 0.9], (len(texts), 1))

    return lambda name, version, run_id, tags: LoadedModel(name, version, Slow(), ("neg", "pos"))


def test_response_never_waits_for_a_slow_challenger(tmp_path):

    fast = _sleepy_loader(0.0)
    champ = ChampionWatcher("m", resolver=lambda n, a: ("1", None, {}), loader=fast)
    chal = ChampionWatcher("m", "challenger", resolver=lambda n, a: ("2", None, {}),
                           loader=_sleepy_loader(0.3))
    settings = ServeSettings(model_name="m", db_url=f"sqlite:///{tmp_path / 's.db'}",
                             token=TOKEN, params=_params(queue_max=2, budget_ms=1.0))
    app = create_app(settings, watcher=champ, challenger=chal)
    with testing.serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        times, ids = [], []
        for i in range(6):
            t0 = time.perf_counter()
            r = c.post("/predict", json={"text": f"text {i}"})
            times.append(time.perf_counter() - t0)
            ids.append(r.json()["predictions"][0]["id"])
        assert max(times) < 0.25  # each challenger call takes 0.3 s
        assert app.state.shadow.drain(10)
        shadow = app.state.shadow
        assert shadow.scored + shadow.skipped == 6 and shadow.skipped >= 1  # queue of 2 overflowed
    engine = db.open_db(settings.db_url)
    with engine.connect() as conn:
        logged = {r[0] for r in conn.execute(db.shadow_predictions.select()).all()}
    assert len(logged) == shadow.scored and logged <= set(ids)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v1 (old vocabulary) champion, v2 (old + new vocabulary) challenger."""
    tmp = tmp_path_factory.mktemp("shadow")
    with testing.mlflow_sandbox(tmp / "mlflow"):
        old = testing.synthetic(300, seed=1)
        v1 = testing.train_tiny(old, tmp / "m1")
        both = pd.concat([old, testing.synthetic(300, seed=2, shifted=True)])
        v2 = testing.train_tiny(both, tmp / "m2")
        testing.register_champion(v1, MODEL)
        testing.register_champion(v2, MODEL, alias="challenger")
        yield tmp


def test_two_versions_logged_for_the_same_ids_and_a_better_challenger_is_promoted(registry):
    from mlflow import MlflowClient

    from textloop.pipeline.registry import resolve_challenger

    settings = ServeSettings(model_name=MODEL, db_url=db.default_url(registry), token=TOKEN,
                             params=_params())
    app = create_app(settings)
    replay = testing.synthetic(60, seed=7, shifted=True)
    with testing.serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        deadline = time.monotonic() + 30
        while app.state.shadow.watcher.current is None and time.monotonic() < deadline:
            time.sleep(0.05)
        preds = []
        for chunk in np.array_split(replay.index, 6):
            r = c.post("/predict", json={"texts": replay.loc[chunk, "text"].tolist()})
            preds += r.json()["predictions"]
        assert app.state.shadow.drain(30)
        fb = [{"prediction_id": p["id"], "label": lab} for p, lab in zip(preds, replay["label"])]
        assert c.post("/feedback", json={"items": fb}, headers=AUTH).json() == {"stored": 60}
        status = c.get("/shadow").json()
        assert (status["champion"], status["challenger"]) == ("1", "2")
        assert status["comparison"]["n_paired"] == 60 and status["outlook"][0] == "promote"
        engine = app.state.engine
        pairs = db.read_shadow_pairs(engine, "1", "2", 1000)
        assert set(pairs["id"]) == {p["id"] for p in preds}
        out = run_shadow_policy(engine, settings.params, MODEL, "1", "2", resolve_challenger)
        assert out["action"] == "promote"
        assert out["comparison"]["challenger_accuracy"] > out["comparison"]["champion_accuracy"]
        model = MlflowClient().get_registered_model(MODEL)
        assert {k: str(v) for k, v in model.aliases.items()} == {"champion": "2"}
        deadline = time.monotonic() + 30  # hot swap to v2, shadow stops
        while (app.state.watcher.current.version != "2" or app.state.shadow.watcher.current
               is not None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.watcher.current.version == "2"
        assert app.state.shadow.watcher.current is None
    (row,) = [r for r in db.recent_rows(engine, db.decisions) if r["trigger"] == "shadow"]
    assert row["fired"] and row["reasons"][0].startswith("promote challenger v2 (champion v1)")


def test_a_worse_challenger_is_retired_and_waiting_is_recorded(tmp_path):
    engine = db.open_db(f"sqlite:///{tmp_path / 'loop.db'}")
    rows, shadow, fb = [], [], []
    for i in range(60):
        pid = f"{i:032d}"
        rows.append({"id": pid, "created_at": db.utcnow(), "model_name": "m",
                     "model_version": "1", "text_hash": pid * 2, "text": f"t{i}",
                     "label": "pos", "confidence": 0.9, "probas": {}, "latency_ms": 1.0})
        shadow.append({"prediction_id": pid, "created_at": db.utcnow(), "model_name": "m",
                       "model_version": "2", "champion_version": "1",
                       "label": "neg" if i % 2 else "pos", "confidence": 0.6, "probas": {},
                       "latency_ms": 1.0})
        fb.append({"prediction_id": pid, "text": f"t{i}", "label": "pos", "source": "api"})
    with engine.begin() as conn:
        conn.execute(db.predictions.insert(), rows)
    db.insert_shadow(engine, shadow)
    calls, events = [], []
    params = _params()
    waited = run_shadow_policy(engine, params, "m", "1", "2",
                               lambda *a: calls.append(a), lambda e, p: events.append(e))
    assert waited["action"] == "wait" and calls == [] and events == []  # no feedback yet
    db.insert_feedback(engine, fb)
    out = run_shadow_policy(engine, params, "m", "1", "2", lambda *a: calls.append(a),
                            lambda e, p: events.append(e))
    assert out["action"] == "retire" and events == ["challenger_retired"]
    assert calls == [("m", "challenger", "2", False, out["reason"])]
    assert [r["fired"] for r in db.recent_rows(engine, db.decisions)] == [False, True]


def test_dashboard_shows_champion_vs_challenger(tmp_path):
    fast = _sleepy_loader(0.0)
    champ = ChampionWatcher("m", resolver=lambda n, a: ("1", None, {}), loader=fast)
    chal = ChampionWatcher("m", "challenger", resolver=lambda n, a: ("2", None, {}), loader=fast)
    settings = ServeSettings(model_name="m", db_url=f"sqlite:///{tmp_path / 's.db'}",
                             token=TOKEN, params=_params())
    app = create_app(settings, watcher=champ, challenger=chal)
    with testing.mlflow_sandbox(tmp_path / "mlflow"), testing.serve_in_thread(app) as url, \
            httpx.Client(base_url=url, timeout=30) as c:  # the page also lists registry versions
        c.post("/predict", json={"texts": ["a", "b", "c"]})
        assert app.state.shadow.drain(10)
        page = c.get("/dashboard").text
    assert 'id="challenger-version">v2<' in page and "3 (0 with feedback)" in page
    assert "agreement 100.0%" in page and "wait: 3/50 paired predictions" in page
