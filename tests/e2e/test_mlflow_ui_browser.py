"""The MLflow UI, in headless Chromium, against `mlflow server` as `textloop up` starts it: the link
textloop prints opens the textloop experiment on its training runs (the runs list with the runs
named for what ran), not on the GenAI traces overview; the registered-model link opens the
model's versions with its champion alias; a bare experiment address opens the GenAI side until
the "Model training" switch is clicked once, which the browser remembers. MLflow's assistant
panel opens by itself on a browser's first visit to a local server (no server setting turns that
off): the one click the troubleshooting page names closes it, and it stays closed. Screenshots
are kept in tests/artifacts/browser/ (gitignored)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import fixtures as testing
from tests.support.browser import screenshot
from tests.support.e2e_project import isolate_env, make_project
from textloop.core.layout import Project
from textloop.pipeline import tracking

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # an MLflow server start and a UI load:
# under a minute on a quiet machine, several under load
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = "textloop-data"
RUNS = ("train", "optimize trial 1")  # what ran, named as textloop names its runs


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


def _project_with_runs(tmp_path: Path, monkeypatch) -> tuple[Project, str, list[str]]:
    """A project whose textloop experiment holds a train run and an optimize trial, and a
    registered version of MODEL with the champion alias."""
    import mlflow

    root = make_project(tmp_path / "p", "data.csv")
    isolate_env(monkeypatch, root)
    project = Project(root)
    exp_id = tracking.setup(project)
    assert mlflow.get_experiment(exp_id).tags[tracking.KIND_TAG] == "custom_model_development"
    names = [tracking.run_name(what, tracking.data_label("data.csv")) for what in RUNS]
    for name in names:
        with mlflow.start_run(experiment_id=exp_id, run_name=name):
            mlflow.log_metric("val.accuracy", 0.8)
    mlflow.set_experiment("model-logging")  # the registering run stays out of the runs list
    folder = testing.train_tiny(testing.synthetic(60, seed=1), tmp_path / "model")
    testing.register_champion(folder, MODEL, {"gate_metric": "accuracy"})
    return project, exp_id, names



def test_the_mlflow_ui_lands_on_the_runs_and_the_model_with_the_assistant_closed(tmp_path,
                                                                                 monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium not installed: .ci/install-browser.sh did not run")
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    project, exp_id, names = _project_with_runs(tmp_path, monkeypatch)
    url = f"http://127.0.0.1:{testing.free_ports(1)[0]}"
    proc = _mlflow_ui(project, int(url.rsplit(":", 1)[1]), tmp_path / "mlflow.log")
    try:
        _wait_ready(url, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
                args=FLAGS, viewport={"width": 1400, "height": 900})
            try:
                page = browser.new_page()
                page.goto(tracking.ui_url(url, exp_id))  # the link `textloop up` prints
                for name in names:
                    expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=90_000)
                assert "/runs" in page.url and "/traces" not in page.url, page.url
                assert page.get_by_text("Detect Issues").count() == 0  # the GenAI overview's
                # MLflow opens its assistant on a browser's first visit to a local server, what
                # docs/troubleshooting.md says; a release that stops doing so fails here: drop
                # the note then
                expect(_assistant(page)).to_be_visible(timeout=30_000)
                screenshot(page, "mlflow-experiment-first-visit", full=False)
                _close_assistant(page)
                screenshot(page, "mlflow-experiment-runs", full=False)
                page.reload()
                expect(page.get_by_text(names[0], exact=True).first).to_be_visible(timeout=90_000)
                expect(_assistant(page)).to_have_count(0)  # the browser remembers the click
                bare = f"{url}/#/experiments/{exp_id}"  # a bookmark without the link's query
                page.goto(bare)
                expect(page.get_by_text("Detect Issues").first).to_be_visible(timeout=90_000)
                got_it = page.get_by_role("button", name="Got it")  # the GenAI side's first tip
                if got_it.count():
                    got_it.first.click()
                page.get_by_text("Model training", exact=True).first.click()  # once, remembered
                expect(page.get_by_text(names[0], exact=True).first).to_be_visible(timeout=90_000)
                page.goto(f"{url}/#/")
                page.goto(bare)
                expect(page.get_by_text(names[0], exact=True).first).to_be_visible(timeout=90_000)
                assert page.get_by_text("Detect Issues").count() == 0
                page.goto(tracking.model_ui_url(url, MODEL))  # the other link `up` prints
                expect(page.get_by_text("Version 1").first).to_be_visible(timeout=90_000)
                expect(page.get_by_text("champion").first).to_be_visible()
                expect(_assistant(page)).to_have_count(0)
                assert "workflowType=machine_learning" in page.url, page.url
                screenshot(page, "mlflow-registered-model", full=False)
            finally:
                browser.close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _assistant(page):
    """The assistant panel's question box (there only while the panel is open)."""
    return page.get_by_placeholder("Ask a question")


def _close_assistant(page) -> None:
    """The one click docs/troubleshooting.md names: the × at the panel's top right."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Close", exact=True).first.click()
    expect(_assistant(page)).to_have_count(0)
