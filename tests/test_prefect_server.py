"""The temporary Prefect server `textloop run` starts early (textloop.cli.prefect_server)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from textloop.cli import prefect_server
from textloop.cli.prefect_server import TemporaryServer


def test_no_server_when_an_api_is_configured(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert prefect_server.start_early() is None


def test_a_server_that_dies_leaves_prefect_to_start_its_own(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    server = TemporaryServer(prefect_server._free_port())
    server.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    prefect_server.use(server)
    assert "PREFECT_API_URL" not in os.environ and server.process is None


@pytest.mark.slow
def test_the_early_server_answers_and_stops(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    server = TemporaryServer(prefect_server._free_port()).launch()
    try:
        prefect_server.use(server)


        assert os.environ["PREFECT_API_URL"] == server.api_url and server.healthy()
        process = server.process
    finally:
        server.stop()
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        if "prefect.context" in sys.modules:  # later tests must not see the stopped server
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
    assert server.process is None and process.poll() is not None
