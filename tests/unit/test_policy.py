"""The retrain policy: triggers, guards, exactly-once export, single-flight (stub starter, then
bound to a real Prefect API with a stub lifecycle deployment)."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pandas as pd
import pytest

from textloop.core.config import Params
from textloop.loop import db
from textloop.loop import retrain_policy as pol

NOW = dt.datetime(2025, 1, 1, 12, 0)
PARAMS = Params.model_validate({"feedback": {"min_accuracy": 0.8, "min_new_rows": 200},
                                "retrain": {"cooldown_minutes": 30, "min_labeled_rows": 10,
                                            "overrides": {"optimize.n_trials": 0}}})
DROP = {"accuracy": {"accuracy": 0.6, "n_labeled": 40}, "alerts": ["live accuracy 0.600 < 0.8"]}


def inputs(**kw) -> pol.PolicyInputs:
    base = {"live_accuracy": 0.6, "n_labeled": 40, "alerts": [], "pending_rows": 20,
            "unconsumed_rows": 0, "last_fired_at": None, "active_runs": [], "now": NOW}
    return pol.PolicyInputs(**{**base, **kw})


def test_accuracy_drop_with_new_labels_fires():
    d = pol.decide(inputs(), PARAMS)
    assert d.fire and d.reasons[0].startswith("live accuracy 0.600 < 0.8") and d.blocked == []


@pytest.mark.parametrize("kw, why", [
    ({"pending_rows": 3}, "only 3 new labeled rows"),
    ({"last_fired_at": NOW - dt.timedelta(minutes=10)}, "cooldown"),
    ({"active_runs": ["r1"]}, "single-flight"),
    ({"live_accuracy": 0.95}, "no trigger"),
])
def test_guards_block_with_a_reason(kw, why):
    d = pol.decide(inputs(**kw), PARAMS)
    assert not d.fire and any(why in b for b in d.blocked), d.blocked


def test_other_triggers_and_manual_runs():
    drift = pol.decide(inputs(live_accuracy=None, alerts=["OOV rate up 0.3 > 0.1"]), PARAMS)
    assert drift.fire and drift.reasons == ["drift: OOV rate up 0.3 > 0.1"]
    volume = pol.decide(inputs(live_accuracy=None, pending_rows=150, unconsumed_rows=60), PARAMS)
    assert volume.fire and "210 new labeled rows >= 200" in volume.reasons[0]
    off = Params.model_validate({"retrain": {"enabled": False}})
    assert not pol.decide(inputs(), off).fire
    manual = pol.decide(inputs(live_accuracy=None, pending_rows=0,
                               last_fired_at=NOW - dt.timedelta(minutes=1)), PARAMS, "manual")
    assert manual.fire and manual.trigger == "manual" and manual.blocked == []
    assert manual.reasons == [
        "requested by a person",
        ("manual: cooldown skipped (last retrain 2025-01-01 11:59:00, "
         "next allowed after 2025-01-01 12:29:00 UTC)"),
        "manual: min_labeled_rows skipped (only 0 new labeled rows < retrain.min_labeled_rows 10)"]
    busy = pol.decide(inputs(active_runs=["r1"]), PARAMS, "manual")
    assert not busy.fire and busy.reasons == ["requested by a person"]
    assert busy.blocked == ["single-flight: lifecycle run r1 is still in flight"]
    with pytest.raises(ValueError, match="unknown policy trigger 'cron'"):
        pol.decide(inputs(), PARAMS, "cron")


def test_accuracy_on_new_feedback_names_its_basis():
    d = pol.decide(inputs(live_accuracy=0.62, n_labeled=30, pending_rows=30,
                          accuracy_on="new feedback"), PARAMS, "feedback")
    assert d.fire and d.trigger == "feedback"
    assert d.reasons == ["accuracy on new feedback 0.620 < 0.8 on 30 rows"]
    assert d.inputs["accuracy_on"] == "new feedback" and d.inputs["pending_rows"] == 30


class Harness:
    """A database with feedback, a stub starter that records runs, a stub exporter."""

    def __init__(self, tmp: Path):
        self.engine = db.open_db(db.default_url(tmp))
        self.started: list[dict] = []
        self.exported: list[pd.DataFrame] = []
        self.running: list[str] = []
        self.tmp = tmp
        self.lock = threading.Lock()

    def start(self, parameters: dict) -> str:
        recorded = db.recent_rows(self.engine, db.decisions)[-1]  # recorded before the start
        assert recorded["fired"] is True and recorded["flow_run_id"] is None
        self.started.append(parameters)
        run_id = f"run-{len(self.started)}"
        self.running.append(run_id)
        return run_id

    def export(self, rows: pd.DataFrame) -> Path:
        self.exported.append(rows)
        return self.tmp / f"batch-{len(self.exported)}.parquet"

    def ctx(self) -> pol.PolicyContext:
        return pol.PolicyContext(engine=self.engine, params=PARAMS, starter=self.start,
                                 exporter=self.export, active_runs=lambda: list(self.running),
                                 lock=lambda: self.lock, journal=self.tmp / "decisions.jsonl")

    def add_feedback(self, n: int) -> None:
        db.insert_feedback(self.engine, [{"text": f"t{i}", "label": "pos", "source": "api",
                                          "prediction_id": None} for i in range(n)])


def test_fires_once_exports_once_and_logs_every_decision(tmp_path):
    h = Harness(tmp_path)
    h.add_feedback(15)
    first = pol.run_policy(h.ctx(), DROP)
    assert first.fire and first.flow_run_id == "run-1" and first.exported_rows == 15
    assert h.started == [{"overrides": {"optimize.n_trials": 0}}]
    assert len(h.exported) == 1 and list(h.exported[0].columns) == [
        "text", "label", "prediction_id", "task", "annotator"]
    h.add_feedback(12)  # new feedback while the first retrain runs
    second = pol.run_policy(h.ctx(), DROP)
    assert not second.fire and any("single-flight" in b for b in second.blocked)
    assert len(h.started) == 1 and len(h.exported) == 1
    assert db.counts(h.engine)["feedback_pending"] == 12  # not exported by a blocked decision
    rows = db.recent_rows(h.engine, db.decisions)
    assert [r["fired"] for r in rows] == [True, False]
    assert (tmp_path / "decisions.jsonl").read_text().count("\n") == 2
    h.running.clear()  # the run finished; the cooldown still holds
    third = pol.run_policy(h.ctx(), DROP)
    assert not third.fire and any("cooldown" in b for b in third.blocked)
    assert [r["flow_run_id"] for r in db.recent_rows(h.engine, db.decisions)] == [
        "run-1", None, None]


def test_manual_retrain_inside_the_cooldown_fires_and_says_so(tmp_path):
    h = Harness(tmp_path)
    h.add_feedback(15)
    assert pol.run_policy(h.ctx(), DROP).fire
    h.running.clear()
    fired_at = db.last_fired_at(h.engine)
    assert not pol.run_policy(h.ctx(), DROP).fire  # the monitor is cooling down
    manual = pol.run_policy(h.ctx(), None, trigger="manual", overrides={"train.model": "tfidf"})
    assert manual.fire and manual.flow_run_id == "run-2"
    assert h.started[-1] == {"overrides": {"optimize.n_trials": 0, "train.model": "tfidf"}}
    row = db.recent_rows(h.engine, db.decisions)[-1]
    assert row["trigger"] == "manual" and row["fired"] is True and row["blocked"] == []
    assert row["flow_run_id"] == "run-2" and row["id"] == manual.decision_id
    assert f"manual: cooldown skipped (last retrain {fired_at:%Y-%m-%d %H:%M:%S}, " \
        in " | ".join(row["reasons"])


def test_new_feedback_is_store_rows_plus_pending_db_rows(tmp_path):
    h = Harness(tmp_path)
    h.add_feedback(7)
    ctx = h.ctx()
    ctx.store_rows = lambda: pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos"] * 3})
    fresh = pol.new_feedback(ctx)
    assert fresh["origin"].tolist() == ["store"] * 3 + ["db"] * 7
    ctx.scorer = lambda rows: float((rows["label"] == "neg").mean())
    got = pol.gather(ctx, DROP)  # with a scorer, the report's live accuracy is not the input
    assert (got.unconsumed_rows, got.pending_rows, got.new_rows) == (3, 7, 10)
    assert (got.live_accuracy, got.n_labeled, got.accuracy_on) == (0.0, 10, "new feedback")
    assert pol.gather(h.ctx(), DROP).live_accuracy == 0.6
    dry = pol.run_policy(ctx, None, trigger="feedback", dry_run=True)
    assert dry.fire and dry.decision_id is None and h.started == [] and h.exported == []
    assert db.recent_rows(h.engine, db.decisions) == []


def test_concurrent_evaluations_start_one_run(tmp_path):
    h = Harness(tmp_path)
    h.add_feedback(30)
    barrier = threading.Barrier(4)
    results: list[pol.Decision] = []

    def evaluate() -> None:
        barrier.wait()
        results.append(pol.run_policy(h.ctx(), DROP))

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(d.fire for d in results) == 1 and len(h.started) == 1
    assert sum(d.exported_rows for d in results) == 30


def test_evaluations_on_the_same_evidence_fire_once_without_a_shared_lock(tmp_path):
    """Two checkouts sharing one loop database hold no common lock: two monitor runs, a
    `feedback check` and a person's Retrain, released together by a barrier after all of them
    gathered the same evidence, fire one retrain per round; every other one is recorded
    "already fired by decision N". Many rounds, zero double firings."""
    h = Harness(tmp_path)
    params = PARAMS.model_copy(update={
        "feedback": PARAMS.feedback.model_copy(update={"min_new_rows": 10}),
        "retrain": PARAMS.retrain.model_copy(update={"cooldown_minutes": 0})})
    who = ["monitor", "monitor", "feedback", "manual"]
    go, gathered = threading.Barrier(len(who)), threading.Barrier(len(who))
    started: list[str] = []

    def start(_parameters: dict) -> str:
        started.append(f"run-{len(started) + 1}")
        return started[-1]

    def in_flight() -> list[str]:  # gather's last read: every evaluation has its evidence
        gathered.wait(30)
        return []

    ctx = pol.PolicyContext(engine=h.engine, params=params, starter=start, exporter=h.export,
                            active_runs=in_flight, task="reviews")
    for round_ in range(25):
        h.add_feedback(15)
        results: dict[str, pol.Decision] = {}

        def evaluate(i: int, trigger: str, into: dict[str, pol.Decision]) -> None:
            go.wait(30)
            into[f"{trigger}-{i}"] = pol.run_policy(ctx, DROP, trigger=trigger)

        threads = [threading.Thread(target=evaluate, args=(i, t, results))
                   for i, t in enumerate(who)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        fired = [d for d in results.values() if d.fire]
        assert len(results) == len(who) and len(fired) == 1, (round_, results)
        assert len(started) == round_ + 1 and fired[0].exported_rows == 15
        for lost in (d for d in results.values() if not d.fire):
            assert lost.blocked[-1].startswith(
                f"already fired by decision {fired[0].decision_id} ({fired[0].trigger}, "), lost
            assert lost.flow_run_id is None and lost.exported_rows == 0
    rows = db.recent_rows(h.engine, db.decisions, limit=1000)
    assert sum(r["fired"] for r in rows) == 25 and len(rows) == 25 * len(who)
    assert len(h.exported) == 25 and db.counts(h.engine)["feedback_pending"] == 0
    firings = db.recent_rows(h.engine, db.retrain_firings, limit=1000)
    assert [(f["task"], f["seq"]) for f in firings] == [("reviews", n) for n in range(1, 26)]


def test_failed_start_is_recorded_not_fired(tmp_path):
    h = Harness(tmp_path)
    h.add_feedback(20)
    ctx = h.ctx()
    ctx.starter = lambda params: (_ for _ in ()).throw(RuntimeError("no deployment"))
    d = pol.run_policy(ctx, DROP)
    assert not d.fire and "start failed: RuntimeError: no deployment" in d.blocked
    assert db.recent_rows(h.engine, db.decisions)[-1]["fired"] is False
    assert db.recent_rows(h.engine, db.retrain_firings) == []  # nothing started: released
    h.add_feedback(15)
    again = pol.run_policy(h.ctx(), DROP)  # the same firing watermark may fire now
    assert again.fire and again.flow_run_id == "run-1"


def test_failed_export_is_recorded_not_fired_and_starts_nothing(tmp_path):
    h = Harness(tmp_path)
    h.add_feedback(20)
    ctx = h.ctx()
    ctx.exporter = lambda rows: (_ for _ in ()).throw(RuntimeError("dvc add failed"))
    d = pol.run_policy(ctx, DROP)
    assert not d.fire and d.blocked == ["export failed: RuntimeError: dvc add failed"]
    assert h.started == [] and db.counts(h.engine)["feedback_pending"] == 20
    row = db.recent_rows(h.engine, db.decisions)[-1]
    assert row["fired"] is False and row["blocked"] == d.blocked and row["exported_rows"] == 0


def test_mark_exported_never_exports_a_row_twice(tmp_path):
    h = Harness(tmp_path)
    h.add_feedback(5)
    ids = db.pending_feedback(h.engine)["id"].tolist()
    assert db.mark_exported(h.engine, ids, "a.parquet") == 5
    assert db.mark_exported(h.engine, ids, "b.parquet") == 0
    assert db.pending_feedback(h.engine).empty


def test_a_fired_retrain_is_announced_once_a_blocked_one_not(tmp_path):
    import dataclasses

    h = Harness(tmp_path)
    h.add_feedback(15)
    events: list[tuple[str, dict]] = []
    ctx = dataclasses.replace(h.ctx(), alert=lambda event, payload: events.append((event, payload)))
    first = pol.run_policy(ctx, DROP)
    pol.run_policy(ctx, DROP)  # single-flight: blocked, not announced
    assert [e for e, _ in events] == ["retrain_fired"]
    assert events[0][1]["flow_run_id"] == first.flow_run_id == "run-1"
