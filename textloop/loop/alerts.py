"""Alerts: one `emit(event, payload)` every caller uses; the event goes to the sinks that
subscribe to it (alerts.webhooks, alerts.smtp in params.yaml) and each delivery is logged.

Webhooks get a JSON body signed with HMAC-SHA256 (header `X-Textloop-Signature:
sha256=<hex of HMAC(secret, body)>`, secret from the sink's `secret_env`), retried with
exponential backoff on connection errors, 429 and 5xx (other 4xx answers are final). E-mail
goes through smtplib. Every attempt series is one row of the `alert_deliveries` table. Prefect
automations would need Prefect Cloud-style event wiring for our own events and cannot sign
bodies, so our webhooks use httpx directly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import smtplib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from textloop.core.config import ALERT_EVENTS, AlertsConfig, SmtpSink, WebhookSink
from textloop.core.layout import Project
from textloop.loop import db

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Textloop-Signature"
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class Delivery:
    """The outcome of sending one event to one sink."""

    event: str
    sink: str
    ok: bool
    attempts: int
    status: str


def sign(secret: str, body: bytes) -> str:
    """The signature header value a receiver recomputes: 'sha256=' + hex HMAC-SHA256(body)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True when `header` is the signature of `body` under `secret` (constant-time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def subscribed(events: list[str], event: str) -> bool:
    """Whether a sink's event list includes this event ("*" means every event)."""
    return "*" in events or event in events


def envelope(event: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document every sink receives: id, event, UTC time, the caller's payload."""
    return {"id": uuid.uuid4().hex, "event": event,
            "at": db.utcnow().isoformat(timespec="seconds") + "Z", "payload": dict(payload)}


def _retrying(send: Callable[[], str], retries: int, backoff_s: float,
              sleep: Callable[[float], None]) -> tuple[bool, int, str]:
    """Call `send` until it returns "ok" or raises a final error; transient failures
    (_Transient) are retried `retries` times, waiting backoff_s, 2*backoff_s, ..."""
    status = ""
    for attempt in range(1, retries + 2):
        try:
            return True, attempt, send()
        except _Transient as exc:
            status = str(exc)
        except _Final as exc:
            return False, attempt, str(exc)
        if attempt <= retries:
            sleep(backoff_s * 2 ** (attempt - 1))
    return False, retries + 1, status


class _Transient(Exception):
    """A failure worth retrying (connection refused, timeout, 429, 5xx)."""


class _Final(Exception):
    """A failure retrying cannot fix (4xx, bad configuration)."""


def post_webhook(sink: WebhookSink, doc: dict[str, Any], timeout_s: float) -> str:
    """One POST of the signed JSON body; returns 'HTTP <code>' or raises _Transient/_Final."""
    body = json.dumps(doc, default=str, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "X-Textloop-Event": doc["event"],
               "X-Textloop-Delivery": doc["id"]}
    if sink.secret_env:
        secret = os.environ.get(sink.secret_env)
        if not secret:
            raise _Final(f"${sink.secret_env} is not set: refusing to send unsigned")
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        resp = httpx.post(sink.url, content=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}"[:200]) from None
    if resp.status_code in RETRY_STATUS:
        raise _Transient(f"HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise _Final(f"HTTP {resp.status_code}")
    return f"HTTP {resp.status_code}"


def send_mail(sink: SmtpSink, doc: dict[str, Any], timeout_s: float) -> str:
    """One e-mail with the event as subject and the JSON document as body."""
    msg = EmailMessage()
    msg["Subject"] = f"[textloop] {doc['event']}"
    msg["From"], msg["To"] = sink.sender, ", ".join(sink.to)
    msg.set_content(json.dumps(doc, default=str, indent=2))
    cls = smtplib.SMTP_SSL if sink.security == "ssl" else smtplib.SMTP
    try:
        with cls(sink.host or "", sink.port, timeout=timeout_s) as smtp:
            if sink.security == "starttls":
                smtp.starttls()
            if sink.user_env:
                smtp.login(os.environ.get(sink.user_env, ""),
                           os.environ.get(sink.password_env or "", ""))
            smtp.send_message(msg)
    except smtplib.SMTPResponseException as exc:
        kind = _Transient if exc.smtp_code >= 400 and exc.smtp_code < 500 else _Final
        raise kind(f"SMTP {exc.smtp_code}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}"[:200]) from None
    return "sent"


def emit(event: str, payload: Mapping[str, Any], cfg: AlertsConfig,
         engine: Engine | None = None,
         sleep: Callable[[float], None] = time.sleep) -> list[Delivery]:
    """Send `event` to every sink that subscribes to it and log each delivery (the
    alert_deliveries table when `engine` is given). Never raises for a failed delivery: an
    alert must not break the run that emits it. Raises ValueError for an unknown event name."""
    if event not in ALERT_EVENTS:
        raise ValueError(f"unknown alert event {event!r} (known: {', '.join(ALERT_EVENTS)})")
    doc = envelope(event, payload)
    jobs: list[tuple[str, Callable[[], str]]] = [
        (hook.url, lambda h=hook: post_webhook(h, doc, cfg.timeout_s))
        for hook in cfg.webhooks if subscribed(hook.events, event)]
    if cfg.smtp.host and cfg.smtp.to and subscribed(cfg.smtp.events, event):
        jobs.append((f"smtp://{cfg.smtp.host}:{cfg.smtp.port}",
                     lambda: send_mail(cfg.smtp, doc, cfg.timeout_s)))
    out = []
    for name, send in jobs:
        ok, attempts, status = _retrying(send, cfg.retries, cfg.backoff_s, sleep)
        out.append(Delivery(event, name, ok, attempts, status))
        (log.info if ok else log.warning)("alert %s -> %s: %s after %d attempt(s)", event,
                                          name, status, attempts)
    if engine is not None and out:
        _log_deliveries(engine, out, doc)
    return out


def _log_deliveries(engine: Engine, deliveries: list[Delivery], doc: dict[str, Any]) -> None:
    """One alert_deliveries row per sink; a database error is logged, never raised."""
    rows = [{"created_at": db.utcnow(), "payload": doc, **asdict(d)} for d in deliveries]
    try:
        with engine.begin() as conn:
            conn.execute(db.alert_deliveries.insert(), rows)
    except Exception:
        log.exception("could not log %d alert deliveries", len(rows))


def emit_for(project: Project, event: str, payload: Mapping[str, Any]) -> list[Delivery]:
    """emit() with a project's alerts config and loop database (what flows and the CLI call).
    Best effort: a project whose database cannot be opened still sends, unlogged."""
    params = project.params()
    if not params.alerts.webhooks and not params.alerts.smtp.host:
        return []
    try:
        engine = db.open_db(params.serve.db_url or db.default_url(project.state))
    except Exception:
        log.exception("alerts: loop database unavailable; deliveries are not logged")
        engine = None
    return emit(event, {"project": str(project.root), **payload}, params.alerts, engine)


def recent_deliveries(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The newest delivery log rows (dashboard, `textloop alerts log`)."""
    return db.recent_rows(engine, db.alert_deliveries, limit)
