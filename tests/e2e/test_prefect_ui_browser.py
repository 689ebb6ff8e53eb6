"""The Prefect UI, in headless Chromium, against the Prefect server `textloop up` starts: the flow
run a `textloop run` made appears in the runs list under its name, and its page says it
completed. Screenshots are kept in tests/artifacts/browser/ (gitignored)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_first_hour import textloop
from tests.e2e.test_one_prefect_server import _up_prefect
from tests.support.e2e_project import make_project, sample_csv
from tests.support.fixtures import free_ports
from textloop import services
from textloop.core.layout import Project

# a Prefect server with its UI, a whole lifecycle run and a UI load: minutes on two shared cores
pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"


def _flow_runs(api: str) -> list[dict]:
    """Every flow run the server holds, through Prefect's REST API."""
    resp = httpx.post(f"{api}/flow_runs/filter", json={"limit": 50}, timeout=30)
    resp.raise_for_status()
    return resp.json()


def test_a_textloop_run_appears_in_the_prefect_ui_with_its_name(tmp_path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium not installed: .ci/install-browser.sh did not run")
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    root = make_project(tmp_path / "p", "sample.csv", **{"ingest.label_col": "sentiment"})
    sample_csv(root / "sample.csv", 210)
    project = Project(root)
    for key, value in services.project_env(project).items():
        monkeypatch.setenv(key, value)
    try:
        ui = _up_prefect(project, free_ports(1)[0])["url"]  # what `textloop up` starts
        textloop(root, "run")  # finds the running server and records its flow run there
        runs = [r for r in _flow_runs(f"{ui}/api") if r["state_type"] == "COMPLETED"]
        assert len(runs) == 1, runs
        name = runs[0]["name"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{ui}/runs")
                link = page.get_by_role("link", name=name, exact=True).first
                expect(link).to_be_visible(timeout=90_000)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "prefect-runs.png"))
                link.click()
                page.wait_for_url(f"**/flow-run/{runs[0]['id']}*", timeout=60_000)
                page.wait_for_load_state("networkidle")
                expect(page.get_by_placeholder("Search by flow run name")).to_have_count(0)
                expect(page.get_by_text("Completed").first).to_be_visible(timeout=60_000)
                expect(page.get_by_text(name).first).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / "prefect-flow-run.png"))
            finally:
                browser.close()
    finally:
        services.down(project)
