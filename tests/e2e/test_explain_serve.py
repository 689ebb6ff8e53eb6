"""Explanations through the served API, the CLI and the dashboard's Explain page:
POST /explain on a registered baseline champion (same checks as /predict), GET /explain and the
global view, `textloop explain`, and one headless-Chromium run of the page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from tasks.train.fit import train_model
from tests.support import fixtures as testing
from textloop.core.config import Params
from textloop.core.text import normalize_text
from textloop.loop import db
from textloop.pipeline.models import NormalizingClassifier
from textloop.serve.app import create_app
from textloop.serve.champion import ChampionWatcher, LoadedModel
from textloop.serve.settings import ServeSettings

MODEL = "tiny-explain"
CHROMIUM = Path("/usr/bin/chromium")
PARAMS = {"serve": {"poll_s": 0.5}, "text": {"max_chars": 200, "overlong": "refuse"},
          "explain": {"top_k": 4}, "train": {"tfidf": {"min_df": 1}}}


def _watcher(folder: Path) -> ChampionWatcher:
    """The real alias watcher over a stub registry that names v1 of the model folder (the
    registry round trip itself is tested in test_serve/test_model_bundle)."""
    def load(name: str, version: str, run_id: str | None, tags: dict) -> LoadedModel:
        clf = NormalizingClassifier(folder)
        return LoadedModel(name=name, version=version, classifier=clf,
                           classes=tuple(clf.classes_), clean=clf.meta["clean"])

    return ChampionWatcher(MODEL, poll_s=60, resolver=lambda *_: ("1", None, {}), loader=load)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The real baseline (word + char tf-idf, NB-LR) as the served champion."""
    tmp = tmp_path_factory.mktemp("explain")
    params = Params.model_validate(PARAMS)
    frame = testing.synthetic(300, seed=2)
    train_model(frame.iloc[:240], frame.iloc[240:], params, tmp / "model")
    settings = ServeSettings(model_name=MODEL, db_url=db.default_url(tmp), token="t",
                             params=params)
    with testing.mlflow_sandbox(tmp / "mlflow"), \
            testing.serve_in_thread(create_app(settings, watcher=_watcher(tmp / "model"))) as url:
        yield url, NormalizingClassifier(tmp / "model")


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served[0], timeout=60) as c:
        yield c


TEXT = "  <p>What a   GREAT film&nbsp;— really <b>fun</b>, never boring!</p> "


def test_explain_api_answers_spans_in_the_posted_text(client, served):
    resp = client.post("/explain", json={"text": TEXT})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["model"] == {"name": MODEL, "version": "1"} and out["method"] == "exact"
    assert out["label"] == "pos" == out["target"] and out["truncated"] is False
    for s in out["spans"]:
        assert TEXT[s["start"]:s["end"]] == s["text"]
    weight = {s["text"]: s["weight"] for s in out["spans"]}
    assert weight["GREAT"] > 0 and weight["fun"] > 0 and weight["boring"] < 0
    assert out["base"] + sum(f["weight"] for f in out["features"]) == pytest.approx(
        out["score"], rel=1e-6, abs=1e-6)
    assert len(out["top_for"]) <= 4 and len(out["top_against"]) <= 4  # explain.top_k
    # the same numbers as the model folder explains in process
    local = served[1].explain(TEXT)
    assert out["score"] == pytest.approx(local["score"]) and out["spans"] == local["spans"]
    other = client.post("/explain", json={"text": TEXT, "target": "neg"}).json()
    assert other["target"] == "neg" and other["score"] == pytest.approx(-out["score"])


@pytest.mark.parametrize("body,status", [
    ({"text": ""}, 422),                       # empty
    ({"text": "<br/>\u200b  "}, 422),           # empty after normalisation
    ({"text": "y" * 201}, 422),                # longer than text.max_chars (refuse)
    ({"text": "good", "extra": 1}, 422),       # unknown field
    ({"texts": ["good"]}, 422),                # one text only
    ({"text": "good", "target": "maybe"}, 422),  # unknown class
    ({"text": "great film \ud83d"}, 422),       # a lone surrogate (not UTF-8 encodable)
    ({"text": "z" * 1_000_000}, 422),           # a megabyte: refused, never echoed
])
def test_explain_api_refuses_like_predict(client, body, status):
    resp = client.post("/explain", content=json.dumps(body),  # ASCII: escapes a lone surrogate
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert len(resp.text) < 2000  # never echoes the input


def test_explain_page_and_global_view(client):
    page = client.get("/explain")
    assert page.status_code == 200
    assert 'id="explain-form"' in page.text and "v1" in page.text
    assert 'data-class="pos"' in page.text and 'data-class="neg"' in page.text
    view = client.get("/api/explain/global").json()
    assert view["model"]["version"] == "1"
    top_pos = {g for g, _ in view["global"]["classes"]["pos"]["for"]}
    assert top_pos & {"word:great", "word:fun", "word:good", "word:excellent"}
    dashboard = Path(__file__).parents[2] / "textloop/serve/templates/dashboard.html"
    assert 'id="explain-link" href="/explain"' in dashboard.read_text()  # the browser test clicks it


def test_cli_explain_text_and_file(served, tmp_path, monkeypatch):
    """`textloop explain` prints the coloured text and the features; --json the object."""
    from textloop import cli
    from textloop.cli import command_context
    from textloop.pipeline import registry

    model = served[1]
    params = Params.model_validate(PARAMS)
    project = type("P", (), {"params": staticmethod(lambda: params)})()
    monkeypatch.setattr(command_context, "open_project", lambda: project)
    monkeypatch.setattr(registry, "load_champion",
                        lambda _: (model, {"model_name": MODEL, "version": "7"}))
    runner = CliRunner()
    shown = runner.invoke(cli.app, ["explain", "a great film, never boring"])
    assert shown.exit_code == 0, shown.output
    assert f"{MODEL} v7: pos" in shown.output and "top features (pos)" in shown.output
    assert "'great'" in shown.output and "'boring'" in shown.output
    path = tmp_path / "review.txt"
    path.write_text("<p>Awful,  DULL plot</p>", encoding="utf-8")
    as_json = runner.invoke(cli.app, ["explain", str(path), "--json", "--target", "neg"])
    assert as_json.exit_code == 0, as_json.output
    out = json.loads(as_json.output)
    assert out["target"] == "neg" and out["normalized"] == normalize_text(path.read_text())
    assert {s["text"] for s in out["spans"]} >= {"Awful", "DULL", "plot"}
    bad = runner.invoke(cli.app, ["explain", "good", "--target", "maybe"])
    assert bad.exit_code == 2 and "unknown class" in bad.output


@pytest.mark.browser
def test_explain_page_highlights_spans_in_chromium(served, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium not installed: .ci/install-browser.sh did not run")
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    from playwright.sync_api import expect, sync_playwright

    from tests.e2e.test_dashboard_browser import FLAGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{served[0]}/dashboard")
            page.click("#explain-link")
            page.fill("#explain-text", "A great film 😀, never boring")
            page.click("#explain-button")
            marks = page.locator("#explained mark[data-weight]")
            expect(marks.first).to_be_visible(timeout=30_000)
            expect(page.locator("#explain-summary")).to_have_attribute("data-label", "pos")
            weights = {m.text_content(): float(m.get_attribute("data-weight"))
                       for m in marks.all()}
            assert weights["great"] > 0 and weights["boring"] < 0
            assert page.locator("#explained").text_content() == "A great film 😀, never boring"
            assert "rgba(16, 185, 129" in marks.filter(has_text="great").first.get_attribute(
                "style")
            expect(page.locator("#top-features tr")).not_to_have_count(0)
        finally:
            browser.close()


@pytest.mark.slow
def test_global_view_of_each_registered_version(served, tmp_path):
    """deploy's registry.register stores the global view beside the model; the Explain page
    shows any version's (v1 from MLflow here, while the stub watcher serves its own v1)."""
    import mlflow

    from textloop.core.model import read_meta
    from textloop.pipeline import registry

    folder = served[1].folder
    with mlflow.start_run() as run:
        pass
    version = registry.register(MODEL, folder, read_meta(folder), np.arange(3, dtype=np.uint64),
                                run.info.run_id, {}, {})
    assert str(version.version) == "1"
    saved = json.loads((folder / "global_explanation.json").read_text())
    assert registry.global_explanation(MODEL, "1") == saved
    assert registry.global_explanation(MODEL, "9") is None
    with httpx.Client(base_url=served[0], timeout=60) as client:
        page = client.get("/explain", params={"version": "1"})
        assert page.status_code == 200 and 'id="version-links"' in page.text
        assert client.get("/explain", params={"version": "x"}).status_code == 422
