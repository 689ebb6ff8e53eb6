"""Alerts: signed webhook deliveries reach a local receiver, a failing receiver is retried and
every delivery is logged, e-mail reaches an SMTP sink, routing follows the sinks' event lists."""

from __future__ import annotations

import json

import pytest

from tests.support.receivers import smtp_sink, webhook_receiver
from textloop.core.config import AlertsConfig
from textloop.loop import alerts, db


def _cfg(**kw) -> AlertsConfig:
    return AlertsConfig.model_validate({"backoff_s": 0.01, "timeout_s": 5, **kw})


def test_signed_delivery_reaches_the_receiver_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    engine = db.open_db(f"sqlite:///{tmp_path / 'loop.db'}")
    with webhook_receiver() as (url, got):
        cfg = _cfg(webhooks=[{"url": url, "events": ["drift"], "secret_env": "HOOK_SECRET"}])
        out = alerts.emit("drift", {"alerts": ["class PSI 0.4 > 0.2"]}, cfg, engine)
    assert [(d.ok, d.attempts, d.status) for d in out] == [(True, 1, "HTTP 200")]
    assert len(got.items) == 1
    body, headers = got.items[0]["body"], got.items[0]["headers"]
    assert alerts.verify("s3cret", body, headers[alerts.SIGNATURE_HEADER])
    assert not alerts.verify("other", body, headers[alerts.SIGNATURE_HEADER])
    doc = json.loads(body)
    assert doc["event"] == "drift" and doc["payload"] == {"alerts": ["class PSI 0.4 > 0.2"]}
    assert headers["X-Textloop-Event"] == "drift" and headers["X-Textloop-Delivery"] == doc["id"]
    rows = alerts.recent_deliveries(engine)
    assert [(r["event"], r["sink"], r["ok"], r["attempts"]) for r in rows] == [
        ("drift", url, True, 1)]


def test_failing_receiver_is_retried_with_backoff_and_logged(tmp_path):
    engine = db.open_db(f"sqlite:///{tmp_path / 'loop.db'}")
    waits: list[float] = []
    with webhook_receiver(fail_first=2) as (url, got):
        out = alerts.emit("run_failed", {"error": "x"}, _cfg(webhooks=[{"url": url}], retries=3,
                                                              backoff_s=0.5), engine, waits.append)
    assert [(d.ok, d.attempts) for d in out] == [(True, 3)]
    assert len(got.items) == 3 and waits == [0.5, 1.0]
    assert len({json.loads(i["body"])["id"] for i in got.items}) == 1  # same delivery id
    with webhook_receiver(fail_first=10) as (url, got):
        out = alerts.emit("run_failed", {}, _cfg(webhooks=[{"url": url}], retries=2), engine,
                          waits.append)
    assert [(d.ok, d.attempts, d.status) for d in out] == [(False, 3, "HTTP 503")]
    rows = alerts.recent_deliveries(engine)
    assert [(r["ok"], r["attempts"]) for r in rows] == [(True, 3), (False, 3)]


def test_unreachable_receiver_and_missing_secret_never_raise(monkeypatch):
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with webhook_receiver() as (url, _):
        dead = url  # closed after the block: connection refused
    cfg = _cfg(webhooks=[{"url": dead}, {"url": dead, "secret_env": "NO_SUCH_SECRET"}],
               retries=1)
    out = alerts.emit("retrain_fired", {}, cfg, None, lambda s: None)
    assert [(d.ok, d.attempts) for d in out] == [(False, 2), (False, 1)]
    assert "ConnectError" in out[0].status and "NO_SUCH_SECRET" in out[1].status


def test_routing_by_event_and_email_through_smtp(tmp_path):
    with webhook_receiver() as (url, got), smtp_sink() as (port, mails):
        cfg = _cfg(webhooks=[{"url": url, "events": ["version_promoted"]}],
                   smtp={"host": "127.0.0.1", "port": port, "to": ["ops@example.org"],
                         "events": ["drift", "version_promoted"]})
        first = alerts.emit("drift", {"n": 1}, cfg)
        second = alerts.emit("version_promoted", {"version": "2"}, cfg)
        third = alerts.emit("labeling_queue", {"rows": 900}, cfg)
    assert [d.sink for d in first] == [f"smtp://127.0.0.1:{port}"]
    assert [d.sink for d in second] == [url, f"smtp://127.0.0.1:{port}"]
    assert third == [] and len(got.items) == 1 and len(mails.items) == 2
    assert "Subject: [textloop] drift" in mails.items[0]["data"]
    assert "<ops@example.org>" in mails.items[1]["rcpt"][0]


def test_unknown_event_names_are_refused():
    with pytest.raises(ValueError, match="unknown alert event"):
        alerts.emit("drfit", {}, _cfg())
    with pytest.raises(ValueError, match="unknown event"):
        _cfg(webhooks=[{"url": "http://127.0.0.1:1/x", "events": ["drfit"]}])


def test_lifecycle_announces_failures_and_gate_outcomes_to_the_project_sinks(tmp_path):
    import yaml

    from flows.lifecycle import announce
    from textloop.core.layout import Project

    with webhook_receiver() as (url, got):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(
            {"alerts": {"webhooks": [{"url": url, "events": ["run_failed", "version_refused"]}]}}))
        project = Project(tmp_path)
        announce(project, {"state": "failed", "error": "stage train failed", "flow_run_id": "f"})
        announce(project, {"state": "completed", "deploy": {"outcome": "refused",
                                                            "candidate_version": "3"}})
        announce(project, {"state": "completed", "deploy": {"outcome": "promoted"}})  # not routed
        announce(project, {"state": "completed", "deploy": {"outcome": "unchanged"}})
    docs = [json.loads(i["body"]) for i in got.items]
    assert [d["event"] for d in docs] == ["run_failed", "version_refused"]
    assert docs[0]["payload"]["error"] == "stage train failed"
    assert docs[1]["payload"]["deploy"]["candidate_version"] == "3"
    engine = db.open_db(db.default_url(project.state))
    assert [r["event"] for r in alerts.recent_deliveries(engine)] == ["run_failed",
                                                                     "version_refused"]


def test_cli_alerts_test_and_log(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from tests.support.e2e_project import isolate_env
    from textloop.cli import app

    with webhook_receiver() as (url, got):
        (tmp_path / "dvc.yaml").write_text("stages: {}\n")
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(
            {"alerts": {"webhooks": [{"url": url, "events": ["alert_test"]}]}}))
        isolate_env(monkeypatch, tmp_path)
        sent = CliRunner().invoke(app, ["alerts", "test"])
        logged = CliRunner().invoke(app, ["alerts", "log"])
    assert sent.exit_code == 0 and f"{url}: ok (HTTP 200, 1 attempts)" in sent.output
    assert logged.exit_code == 0 and "alert_test" in logged.output and url in logged.output
    assert len(got.items) == 1
