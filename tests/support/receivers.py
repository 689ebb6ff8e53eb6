"""Local receivers for alert tests: an HTTP webhook endpoint and a minimal SMTP sink, both on
127.0.0.1 in a thread (aiosmtpd is not a dependency; the SMTP dialogue below is the subset
smtplib speaks: EHLO/HELO, MAIL, RCPT, DATA, QUIT)."""

from __future__ import annotations

import contextlib
import http.server
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    """What a receiver got: one entry per request / message."""

    items: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0  # webhook: answer 503 to this many requests first
    lock: threading.Lock = field(default_factory=threading.Lock)


def _webhook_handler(box: Received) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with box.lock:
                box.items.append({"headers": dict(self.headers), "body": body})
                failing = box.fail_first > 0
                box.fail_first -= 1 if failing else 0
            self.send_response(503 if failing else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    return Handler


@contextlib.contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[tuple[str, Received]]:
    """(url, received) of an HTTP server on 127.0.0.1 that records every POST."""
    box = Received(fail_first=fail_first)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _webhook_handler(box))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", box
    finally:
        server.shutdown()
        server.server_close()


def _smtp_handler(box: Received) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self) -> None:
            self.reply("220 sink ready")
            msg: dict[str, Any] = {"rcpt": []}
            while line := self.rfile.readline():
                cmd = line.decode(errors="replace").strip()
                upper = cmd.upper()
                if upper.startswith(("EHLO", "HELO")):
                    self.reply("250 sink")
                elif upper.startswith("MAIL FROM"):
                    msg["from"] = cmd[10:]
                    self.reply("250 ok")
                elif upper.startswith("RCPT TO"):
                    msg["rcpt"].append(cmd[8:])
                    self.reply("250 ok")
                elif upper == "DATA":
                    self.reply("354 end with .")
                    data = []
                    while (part := self.rfile.readline()) not in (b".\r\n", b""):
                        data.append(part)
                    msg["data"] = b"".join(data).decode(errors="replace")
                    with box.lock:
                        box.items.append(msg)
                    msg = {"rcpt": []}
                    self.reply("250 queued")
                elif upper == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("250 ok")

    return Handler


@contextlib.contextmanager
def smtp_sink() -> Iterator[tuple[int, Received]]:
    """(port, received) of a minimal SMTP server on 127.0.0.1 that keeps every message."""
    box = Received()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _smtp_handler(box))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], box
    finally:
        server.shutdown()
        server.server_close()
