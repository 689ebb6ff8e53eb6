"""The dashboard on IMDb in headless Chromium, after what a user does in the first hour: a
`textloop init` project on a few hundred IMDb reviews, `textloop run`, the API serving traffic,
`textloop label next 5` and one `textloop monitor`. At 1280x800 the first screen answers what is
served, how good it is (with its interval), whether it drifts and what waits for a person; no
panel overflows sideways and no text leaves the viewport; one sign-in serves the browser session.
Screenshots are kept in tests/artifacts/browser/ (gitignored). Skipped, with the reason, when
../shared/data/imdb is absent; the reviews are sampled into the test's tmp folder, never the repo."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.e2e.test_dashboard_browser import CHROMIUM, FLAGS
from tests.e2e.test_dashboard_first_screen import ANSWERS, CLIPPED_JS
from tests.e2e.test_first_hour import textloop
from tests.support import fixtures as testing
from tests.support.browser import screenshot
from tests.support.e2e_project import REPO, make_project
from textloop.core.layout import Project, configure
from textloop.serve.app import create_app
from textloop.serve.settings import from_project

# a training run, serving, label next and a monitor flow: minutes on two shared cores
pytestmark = [pytest.mark.browser, pytest.mark.slow]
# ../shared/data/imdb next to the checkout (or next to a folder above it, for a worktree)
IMDB = next((b / "shared/data/imdb" for b in REPO.parents if (b / "shared/data/imdb").is_dir()),
            REPO.parent / "shared/data/imdb")
WIDTH, HEIGHT = 1280, 800
MODEL = "textloop-imdb-train"  # the registered name textloop derives from the source file
# a panel (a section, a first-screen answer, a table) whose content is wider than its box: the
# content spills over or is cut off, whatever the panel's overflow style
PANEL_OVERFLOW_JS = """() => {
  const out = [];
  for (const el of document.querySelectorAll("section, #answers > div, table, pre")) {
    if (el.getBoundingClientRect().width === 0 || el.closest("[hidden]")) continue;
    if (el.scrollWidth > el.clientWidth + 1)
      out.push((el.id || el.tagName.toLowerCase()) + ": " + el.scrollWidth + " > " + el.clientWidth);
  }
  return out;
}"""

# a one-word table cell ("champion", "traffic", "action") laid out on more than one line: a
# word cut in two that a person has to piece together
BROKEN_WORDS_JS = """() => {
  const out = [];
  for (const cell of document.querySelectorAll("th, td")) {
    const word = cell.textContent.trim();
    if (!word || /\\s/.test(word) || word.length > 24 || cell.closest("[hidden]")) continue;
    const range = document.createRange();
    range.selectNodeContents(cell);
    const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (lines.size > 1) out.push(word);
  }
  return out;
}"""


def _imdb_sample(split: str, n: int, path: Path) -> Path:
    """`n` reviews of an IMDb split, half pos and half neg, as a parquet file at `path`."""
    df = pd.read_parquet(IMDB / f"{split}.parquet")
    df.groupby("label").sample(n // 2, random_state=0).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A project on 400 IMDb train reviews with 200 test reviews, after `textloop run`; the API
    serving it has predicted 120 unlabeled reviews, 5 of them wait to be labeled, and the monitor
    has written its report. Yields the API's URL and its token."""
    if not (IMDB / "train.parquet").is_file():
        pytest.skip(f"IMDb is not in {IMDB} (shared data absent): nothing to put on the dashboard")
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium not installed: .ci/install-browser.sh did not run")
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    root = make_project(tmp_path_factory.mktemp("imdb") / "proj", "imdb-train.parquet",
                        **{"ingest.test_source": "imdb-test.parquet", "ingest.id_col": "path",
                           "evaluate.bootstrap_samples": 200})
    _imdb_sample("train", 400, root / "imdb-train.parquet")
    _imdb_sample("test", 200, root / "imdb-test.parquet")
    textloop(root, "run")
    project = Project(root)
    configure(project)  # undone at the module's end (tests/conftest.py)
    settings = from_project(project)
    assert settings.model_name == MODEL
    unlabeled = pd.read_parquet(IMDB / "unsup.parquet").text.head(120).tolist()
    with testing.serve_in_thread(create_app(settings)) as url:
        httpx.post(f"{url}/predict", json={"texts": unlabeled}, timeout=120).raise_for_status()
        textloop(root, "label", "next", "5")
        textloop(root, "monitor", "--no-act")
        yield url, settings.token


def _browser(pw, tmp_path: Path):
    return pw.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
        viewport={"width": WIDTH, "height": HEIGHT})



def test_the_imdb_first_screen_answers_four_questions_with_nothing_clipped(stack, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, _ = stack
    with sync_playwright() as pw:
        browser = _browser(pw, tmp_path)
        try:
            page = browser.new_page()
            page.goto(f"{url}/dashboard")
            served = page.locator("#answer-served")
            expect(served).to_contain_text("v1")
            expect(served).to_contain_text(MODEL)
            screenshot(page, f"dashboard-imdb-{WIDTH}")
            for answer in ANSWERS:
                box = page.locator(f"#{answer}").bounding_box()
                assert box is not None and box["y"] + box["height"] <= HEIGHT, answer
                assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, answer
            quality = page.locator("#answer-quality").inner_text()
            assert re.search(r"accuracy 0\.\d{3}", quality), quality
            low, high = map(float, re.search(r"95% CI (0\.\d+)–(0\.\d+)", quality).groups())
            accuracy = float(re.search(r"accuracy (0\.\d+)", quality).group(1))
            assert low < accuracy < high, quality  # 200 test reviews: a real interval
            expect(page.locator("#answer-drift")).to_contain_text("last report")
            expect(page.locator("#answer-drift")).not_to_contain_text("No monitor reports yet")
            expect(page.locator("#answer-waiting")).to_contain_text("5 texts to label")
            assert page.evaluate(PANEL_OVERFLOW_JS) == []
            assert page.evaluate(CLIPPED_JS) == []
            expect(page.locator("#history-body tr")).to_have_count(1)  # v1's promotion
            assert page.evaluate(BROKEN_WORDS_JS) == []
        finally:
            browser.close()


def test_one_sign_in_serves_the_dashboard_and_the_label_page_on_imdb(stack, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, token = stack
    with sync_playwright() as pw:
        browser = _browser(pw, tmp_path)
        try:
            page = browser.new_page()
            page.goto(f"{url}/dashboard")
            assert page.locator("input[type=password]").count() == 1
            page.fill("#token", token)
            page.click("#sign-in-button")
            expect(page.locator("#signed-in")).to_be_visible()
            page.click("#label-link")
            expect(page.locator("#token")).to_be_hidden()  # the session's sign-in holds
            page.fill("#annotator", "ann")
            page.click("#start")
            expect(page.locator("#text")).not_to_be_empty()
            assert len(page.locator("#text").inner_text()) > 40  # a review, not a placeholder
            screenshot(page, f"label-imdb-{WIDTH}")
            assert page.evaluate(CLIPPED_JS) == []
        finally:
            browser.close()
