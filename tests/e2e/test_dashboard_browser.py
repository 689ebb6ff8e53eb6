"""The dashboard in headless Chromium: see the champion, press Retrain, watch the new lifecycle
run appear and progress (a stub `lifecycle` deployment executed by a real Prefect runner)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import fixtures as testing
from textloop.core.config import Params
from textloop.loop import db
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "browser-token"
MODEL = "tiny-dashboard"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Champion v1, a Prefect API with a runner serving the stub lifecycle, the API app."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):  # CI installs it: a missing browser is a failure there
            pytest.fail("Chromium not installed: .ci/install-browser.sh did not run")
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    tmp = tmp_path_factory.mktemp("dash")
    with testing.prefect_api(stub_deployment=False), testing.mlflow_sandbox(tmp / "mlflow"):
        folder = testing.train_tiny(testing.synthetic(200, seed=1), tmp / "m1")
        testing.register_champion(folder, MODEL, {"gate_metric": "accuracy",
                                                  "test_accuracy": "0.93"})
        with _runner(tmp) as _, _app(tmp) as url:
            yield url


def _runner(tmp: Path) -> subprocess.Popen:
    """`stub_lifecycle.serve()` in a subprocess: registers lifecycle/lifecycle and runs it."""
    from prefect.settings import get_current_settings

    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    code = "from tests.support.stub_flows import stub_lifecycle as f; f.serve(name='lifecycle')"
    log = (tmp / "runner.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return _Terminating(proc)


class _Terminating:
    """Context manager stopping a subprocess we started (by its pid)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def __enter__(self) -> subprocess.Popen:
        return self.proc

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _app(tmp: Path):
    """The API with a project folder (feedback store, state) so Retrain goes through the policy."""
    (tmp / "project").mkdir()
    (tmp / "project/params.yaml").write_text("serve: {poll_s: 0.5}\n")  # the policy reads it
    params = Params.model_validate({"serve": {"poll_s": 0.5}})
    settings = ServeSettings(model_name=MODEL, db_url=db.default_url(tmp / "project/.textloop"),
                             token=TOKEN, params=params, project_root=tmp / "project",
                             state=tmp / "project/.textloop")
    return testing.serve_in_thread(create_app(settings))


def _wait_for_deployment(timeout_s: float = 90) -> None:
    """The runner registers the deployment asynchronously: poll until the API lists it."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with get_client(sync_client=True) as client:
                client.read_deployment_by_name("lifecycle/lifecycle")
            return
        except ObjectNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_dashboard_retrain_starts_a_run_and_shows_its_progress(stack, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    _wait_for_deployment()
    assert httpx.get(f"{stack}/api/runs").json()["runs"] == []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{stack}/dashboard")
            expect(page.locator("#champion-version")).to_have_text("v1")
            expect(page.locator("#versions svg")).to_have_count(1)
            page.fill("#token", TOKEN)
            page.fill("#n-trials", "0")
            page.click("#retrain-button")
            status = page.locator("#retrain-status")
            expect(status).to_have_attribute("data-run-id", re.compile(r"^[0-9a-f-]{36}$"),
                                            timeout=30_000)
            run_id = status.get_attribute("data-run-id")
            expect(page.locator(f'#runs-body tr[data-run-id="{run_id}"]')).to_have_count(1)
            expect(status).to_have_attribute("data-state", "COMPLETED", timeout=120_000)
            expect(page.locator(f'#runs-body tr[data-run-id="{run_id}"]')).to_contain_text(
                "Completed")
        finally:
            browser.close()
    runs = httpx.get(f"{stack}/api/runs").json()["runs"]
    assert [r["id"] for r in runs] == [run_id]
    assert runs[0]["parameters"] == {"overrides": {"optimize.n_trials": 0}}
