"""Alert delivery counts only what arrived: a redirect is not a delivery, and `alerts.timeout_s`
is a deadline for a whole attempt, also against a sink that answers one byte at a time. The
sinks are real HTTP and SMTP servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.server
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from textloop.core.config import AlertsConfig
from textloop.loop import alerts


@contextlib.contextmanager
def _sink(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """The base URL of a threaded HTTP server on 127.0.0.1 running `handler`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        """Quiet."""


def _redirecting(code: int, hits: list[str]) -> type[http.server.BaseHTTPRequestHandler]:
    """POST /hook answers `code` with Location /final; POST /final answers 200."""

    class Handler(_Quiet):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hits.append(self.path)
            self.send_response(code if self.path == "/hook" else 200)
            if self.path == "/hook":
                self.send_header("Location", "/final")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def _trickling(stop: threading.Event) -> type[http.server.BaseHTTPRequestHandler]:
    """Answers 200 with its headers at once, then the 100-byte body one byte every 2 s (the
    sink's own pacing), until the client hangs up or the server stops."""

    class Handler(_Quiet):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.flush()
            for _ in range(100):
                if stop.wait(2):
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return

    return Handler


@pytest.mark.parametrize("code", [301, 307])
def test_a_sink_answering_a_redirect_is_a_failed_delivery_not_ok(code):
    hits: list[str] = []
    with _sink(_redirecting(code, hits)) as base:
        cfg = AlertsConfig.model_validate({"webhooks": [{"url": f"{base}/hook"}],
                                           "backoff_s": 0.01, "timeout_s": 5})
        out = alerts.emit("alert_test", {"message": "x"}, cfg)
    assert len(out) == 1 and not out[0].ok
    assert f"HTTP {code}" in out[0].status and "/final" in out[0].status
    assert out[0].attempts == 1  # a redirect is final: resending cannot fix the address
    assert hits == ["/hook"]  # the signed body is not re-sent to another address


def test_only_a_2xx_answer_counts_as_delivered():
    with _sink(_redirecting(200, [])) as base:
        cfg = AlertsConfig.model_validate({"webhooks": [{"url": f"{base}/hook"}]})
        out = alerts.emit("alert_test", {}, cfg)
    assert [(d.ok, d.status) for d in out] == [(True, "HTTP 200")]


def test_alerts_test_against_a_sink_sending_one_byte_every_2s_ends_at_the_deadline(
        tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from tests.support.e2e_project import isolate_env
    from textloop.cli import app

    stop = threading.Event()
    with _sink(_trickling(stop)) as base:
        (tmp_path / "dvc.yaml").write_text("stages: {}\n")
        (tmp_path / "params.yaml").write_text("{}\n")
        (tmp_path / "textloop.yaml").write_text(yaml.safe_dump(
            {"alerts": {"timeout_s": 5, "webhooks": [{"url": f"{base}/hook"}]}}))
        isolate_env(monkeypatch, tmp_path)
        start = time.monotonic()
        result = CliRunner().invoke(app, ["alerts", "test"])
        took = time.monotonic() - start
        stop.set()
    assert took < 7.0, f"alerts test took {took:.1f} s with timeout_s 5"
    assert f"{base}/hook: FAILED" in result.output, result.output
    assert "5" in result.output and "deadline" in result.output
    assert result.exit_code == 1


def _dribbling_smtp(stop: threading.Event, stall_after: bytes | None):
    """An SMTP server that answers one byte every 2 s (its own pacing): from its greeting on
    (stall_after None), or from its reply to the first command starting with `stall_after`."""

    class Handler(socketserver.StreamRequestHandler):
        def dribble(self, reply: bytes) -> None:
            for byte in (reply[i:i + 1] for i in range(len(reply))):
                if stop.wait(2):
                    return
                try:
                    self.wfile.write(byte)
                    self.wfile.flush()
                except OSError:
                    return

        def handle(self) -> None:
            if stall_after is None:
                return self.dribble(b"220 sink ready\r\n" * 20)
            self.wfile.write(b"220 sink ready\r\n")
            while line := self.rfile.readline():
                if line.upper().startswith(stall_after):
                    return self.dribble(b"250 ok\r\n" * 20)
                self.wfile.write(b"250 ok\r\n")
            return None

    return Handler


@pytest.mark.parametrize("stall_after", [None, b"MAIL FROM"], ids=["greeting", "mail-from"])
def test_an_smtp_sink_sending_one_byte_every_2s_ends_at_the_deadline(stall_after):
    stop = threading.Event()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _dribbling_smtp(stop, stall_after))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    cfg = AlertsConfig.model_validate({
        "timeout_s": 3, "retries": 2, "backoff_s": 0.01,
        "smtp": {"host": "127.0.0.1", "port": port, "to": ["ops@example.org"]}})
    try:
        start = time.monotonic()
        out = alerts.emit("alert_test", {"message": "x"}, cfg)
        took = time.monotonic() - start
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
    assert took < 3 + 1.5, f"the e-mail attempt took {took:.1f} s with timeout_s 3"
    assert [(d.sink, d.ok, d.attempts) for d in out] == [(f"smtp://127.0.0.1:{port}", False, 1)]
    assert out[0].status == "no complete answer within the 3 s deadline (alerts.timeout_s)"
