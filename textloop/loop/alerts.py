"""Alerts: one `emit(event, payload)` every caller uses; the event goes to the sinks that
subscribe to it (alerts.webhooks, alerts.smtp in params.yaml) and each delivery is logged.

Webhooks get a JSON body signed with HMAC-SHA256 (header `X-Textloop-Signature:
sha256=<hex of HMAC(secret, body)>`, secret from the sink's `secret_env`). Only a 2xx answer
is a delivery: a redirect is reported as a failure naming its target (a signed alert is sent
only to the configured address), other 4xx are final. `alerts.timeout_s` is a deadline for one
whole attempt (connect, send, the complete answer), not per read, so a sink that trickles its
answer cannot hold the caller; an attempt that runs out of it is final (the sink may have the
event already). Connection errors, 408/425/429 and 5xx are retried with exponential backoff
(tenacity). E-mail goes through smtplib under the same deadline (connect to QUIT). Every
attempt series is one row of the `alert_deliveries` table. Prefect
automations would need Prefect Cloud-style event wiring for our own events and cannot sign
bodies, so our webhooks use httpx directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any

import httpx
import tenacity
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
    """Call `send` until it returns (delivered); a transient failure (_Transient) is retried
    `retries` times, waiting backoff_s, 2*backoff_s, ... (tenacity); a final one (_Final)
    stops at once. Returns (delivered, attempts, status)."""
    retry = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential(multiplier=backoff_s, exp_base=2, min=0),
        retry=tenacity.retry_if_exception_type(_Transient), sleep=sleep, reraise=True)
    attempts = 0
    try:
        for attempt in retry:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                status = send()
        return True, attempts, status
    except (_Transient, _Final) as exc:
        return False, attempts, str(exc)


class _Transient(Exception):
    """A failure worth retrying (connection refused, timeout, 429, 5xx)."""


class _Final(Exception):
    """A failure retrying cannot fix (4xx, bad configuration)."""


def post_webhook(sink: WebhookSink, doc: dict[str, Any], timeout_s: float) -> str:
    """One POST of the signed JSON body, done within timeout_s; returns 'HTTP <2xx code>' or
    raises _Transient/_Final."""
    body = json.dumps(doc, default=str, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "X-Textloop-Event": doc["event"],
               "X-Textloop-Delivery": doc["id"]}
    if sink.secret_env:
        secret = os.environ.get(sink.secret_env)
        if not secret:
            raise _Final(f"${sink.secret_env} is not set: refusing to send unsigned")
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        resp = _run_async(_post(sink.url, body, headers, timeout_s), timeout_s)
    except TimeoutError:
        raise _Final(_deadline_line(timeout_s)) from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}"[:200]) from None
    except httpx.HTTPError as exc:
        raise _Final(f"{type(exc).__name__}: {exc}"[:200]) from None
    return _delivered(resp)


def _delivered(resp: httpx.Response) -> str:
    """'HTTP <code>' for a 2xx answer; a retryable code raises _Transient, any other _Final
    (a redirect names where it points: it is not followed)."""
    code = resp.status_code
    if 200 <= code < 300:
        return f"HTTP {code}"
    if code in RETRY_STATUS:
        raise _Transient(f"HTTP {code}")
    if 300 <= code < 400:
        target = resp.headers.get("location", "?")[:120]
        raise _Final(f"HTTP {code} redirect to {target}: not followed; set the sink's url "
                     "to the address that answers 2xx")
    raise _Final(f"HTTP {code}")


async def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float
                ) -> httpx.Response:
    """The POST with its complete answer read (redirects are not followed)."""
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        return await client.post(url, content=body, headers=headers)


def _run_async(coro: Coroutine[Any, Any, httpx.Response], deadline_s: float) -> httpx.Response:
    """Run `coro`, cancelled at deadline_s (raises TimeoutError): a real deadline, which
    httpx's own per-operation timeouts are not. From a thread that already runs an event loop
    it runs in a helper thread."""
    bounded = asyncio.wait_for(coro, deadline_s)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, bounded).result()


def send_mail(sink: SmtpSink, doc: dict[str, Any], timeout_s: float) -> str:
    """One e-mail with the event as subject and the JSON document as body, done within
    timeout_s from connect to QUIT: smtplib's timeout is per socket operation (a server
    dribbling its replies one byte at a time never trips it), so a watchdog shuts the socket
    at the deadline and the attempt fails as final (the server may have the message)."""
    cls = smtplib.SMTP_SSL if sink.security == "ssl" else smtplib.SMTP
    smtp = cls(timeout=timeout_s)  # no host: connect() below, under the watchdog
    expired = threading.Event()
    watchdog = threading.Timer(timeout_s, _expire, (smtp, expired))
    watchdog.daemon = True
    watchdog.start()
    try:
        _converse(smtp, sink, _mail(sink, doc), expired)
    except smtplib.SMTPResponseException as exc:
        if expired.is_set():
            raise _Final(_deadline_line(timeout_s)) from None
        kind = _Transient if exc.smtp_code >= 400 and exc.smtp_code < 500 else _Final
        raise kind(f"SMTP {exc.smtp_code}") from None
    except (OSError, smtplib.SMTPException) as exc:
        if expired.is_set():
            raise _Final(_deadline_line(timeout_s)) from None
        raise _Transient(f"{type(exc).__name__}: {exc}"[:200]) from None
    finally:
        watchdog.cancel()
        smtp.close()
    return "sent"


def _mail(sink: SmtpSink, doc: dict[str, Any]) -> EmailMessage:
    """The message: the event as subject, the JSON document as body."""
    msg = EmailMessage()
    msg["Subject"] = f"[textloop] {doc['event']}"
    msg["From"], msg["To"] = sink.sender, ", ".join(sink.to)
    msg.set_content(json.dumps(doc, default=str, indent=2))
    return msg


def _converse(smtp: smtplib.SMTP, sink: SmtpSink, msg: EmailMessage,
              expired: threading.Event) -> None:
    """Connect, secure, log in, send, quit; a deadline that passed while connecting (before
    there was a socket to shut) is noticed right after."""
    smtp.connect(sink.host or "", sink.port)
    if expired.is_set():
        raise TimeoutError("deadline passed while connecting")
    if sink.security == "starttls":
        smtp.starttls()
    if sink.user_env:
        smtp.login(os.environ.get(sink.user_env, ""), os.environ.get(sink.password_env or "", ""))
    smtp.send_message(msg)
    with contextlib.suppress(OSError, smtplib.SMTPException):  # sent: the goodbye is courtesy
        smtp.quit()


def _expire(smtp: smtplib.SMTP, expired: threading.Event) -> None:
    """The deadline: shut the connection both ways, which ends any read or write blocked on
    it (the plain socket's shutdown, also under TLS, leaving the TLS object to its owner)."""
    expired.set()
    sock = getattr(smtp, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _deadline_line(timeout_s: float) -> str:
    """The status of an attempt that ran out of alerts.timeout_s."""
    return f"no complete answer within the {timeout_s:g} s deadline (alerts.timeout_s)"


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
