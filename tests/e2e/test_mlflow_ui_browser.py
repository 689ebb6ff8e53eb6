"""The MLflow UI, in headless Chromium, opens the textloop experiment on its training runs (the
runs list with the run named for what ran), not on the GenAI traces overview: the experiment is
typed as model training, and the link textloop prints asks for the model-training side."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.e2e_project import isolate_env, make_project
from tests.support.fixtures import free_ports
from textloop.core.layout import Project
from textloop.pipeline import tracking

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # an MLflow server start and a UI load:
# under a minute on a quiet machine, several under load
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS_ENV = "TEXTLOOP_SCREENSHOTS"  # where screenshots are kept (default: the test's tmp dir)


def _mlflow_ui(project: Project, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on the project's store, as `textloop up` starts it."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", project.tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    """Until the server answers /health (or its process died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server at {url} did not answer")


def test_the_mlflow_ui_lands_on_the_runs_of_the_textloop_experiment(tmp_path, monkeypatch):
    import mlflow
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    root = make_project(tmp_path / "p", "data.csv")
    isolate_env(monkeypatch, root)
    project = Project(root)
    exp_id = tracking.setup(project)
    assert mlflow.get_experiment(exp_id).tags[tracking.KIND_TAG] == "custom_model_development"
    name = tracking.run_name("train", tracking.data_label("data.csv"))
    with mlflow.start_run(experiment_id=exp_id, run_name=name):
        mlflow.log_metric("val.accuracy", 0.8)
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    proc = _mlflow_ui(project, int(url.rsplit(":", 1)[1]), tmp_path / "mlflow.log")
    try:
        _wait_ready(url, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(tracking.ui_url(url, exp_id))  # the link `textloop up` prints
                expect(page.get_by_text(name).first).to_be_visible(timeout=60_000)
                shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / "mlflow_ui_landing.png"))
                assert "/runs" in page.url and "/traces" not in page.url, page.url
                assert page.get_by_text("Detect Issues").count() == 0  # the GenAI overview's
            finally:
                browser.close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
