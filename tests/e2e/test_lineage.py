"""Alias history, rollback, human approval, lineage and the model card.

One tiny model uploaded once into a project's own MLflow store (module fixture: one store, its
creation is the slow part), registered as several versions; every alias move goes through
registry.move_alias and must land in the version tags and the loop DB. A running API serves what
the champion alias says (a pending version never) and swaps without a restart; one compact
browser test approves a pending version on the dashboard and sees the champion change."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from typer.testing import CliRunner

from tasks.deploy import GateDecision, awaiting_approval
from tests.support import fixtures as testing
from textloop.core.config import DeployConfig, Params
from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.loop import aliases, db
from textloop.pipeline import lineage, registry
from textloop.pipeline.history import AliasMove, appended_tag, rollback_target, timeline
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings

MODEL = "tiny-lineage"
UPLOADED: dict[str, str] = {}  # the module fixture's model files (artifact URI)
TOKEN = "lineage-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
http = httpx.Client(timeout=60)  # a loaded CI machine: no 5 s default
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCK = """schema: '2.0'
stages:
  ingest:
    cmd: sh scripts/stage.sh .textloop/python ingest
    deps:
    - path: data/00_sources.json
      md5: 1111aaaa
    outs:
    - path: data/01_raw/raw.parquet
      md5: 2222bbbb
  shard:
    cmd: sh scripts/stage.sh .textloop/python shard
    outs:
    - path: data/04_shards
      md5: 3333cccc.dir
"""


def _move(alias: str, src: str | None, dst: str | None, action: str, at: str) -> AliasMove:
    return AliasMove("m", alias, src, dst, action, "why", "me", at=at)


def test_rollback_target_keeps_going_back() -> None:
    moves = [_move("champion", None, "1", "deploy", "t1"), _move("champion", "1", "2", "deploy", "t2"),
             _move("champion", "2", "3", "deploy", "t3")]
    assert rollback_target(moves, "champion", "3") == "2"
    moves.append(_move("champion", "3", "2", "rollback", "t4"))
    assert rollback_target(moves, "champion", "2") == "1"  # not back to the rolled-back v3
    moves.append(_move("champion", "2", "1", "rollback", "t5"))
    assert rollback_target(moves, "champion", "1") is None
    moves.append(_move("champion", "1", "3", "force", "t6"))  # placed again: eligible again
    assert rollback_target(moves, "champion", "3") == "1"


def test_history_tag_dedupes_and_trims() -> None:
    a, b = _move("champion", None, "1", "deploy", "t1"), _move("champion", "1", "2", "deploy", "t2")
    tag = appended_tag(appended_tag(None, a), b)
    assert [m.id for m in timeline([tag, appended_tag(None, b)])] == [a.id, b.id]
    small = appended_tag(appended_tag(None, a), b, limit=len(json.dumps([b.to_dict()])) + 5)
    assert [e["id"] for e in json.loads(small)] == [b.id]  # oldest dropped, newest kept


def test_manual_approval_turns_a_pass_into_pending() -> None:
    passed = GateDecision(outcome="promoted", metric="accuracy", candidate_score=0.9)
    assert awaiting_approval(passed, DeployConfig(approval="auto")).outcome == "promoted"
    pending = awaiting_approval(passed, DeployConfig(approval="manual"))
    assert (pending.outcome, pending.promote, pending.live_version) == ("pending", False, None)
    assert pending.reason.startswith("pending approval")
    refused = GateDecision(outcome="refused", metric="accuracy", candidate_score=0.1)
    assert awaiting_approval(refused, DeployConfig(approval="manual")).outcome == "refused"


def test_compare_reports_each_hash_and_metric() -> None:
    recorded = {"dvc_lock": lineage.dvc_lock_hashes(LOCK),
                "metrics": {"accuracy": 0.8125, "n_test": 400, "f1_macro": 0.8}}
    same = lineage.compare(recorded, recorded, ["data/01_raw", "data/04_shards"])
    assert same["match"] and same["data_match"] and same["metrics_match"]
    rebuilt = {"dvc_lock": lineage.dvc_lock_hashes(LOCK.replace("3333cccc", "9999")),
               "metrics": {"accuracy": 0.8126, "n_test": 400, "f1_macro": 0.8}}
    out = lineage.compare(recorded, rebuilt, ["data/01_raw", "data/04_shards"])
    assert out["paths"]["data/04_shards"] == {"recorded": "3333cccc.dir", "rebuilt": "9999.dir",
                                              "match": False, "data": True}
    assert out["paths"]["data/01_raw/raw.parquet"]["match"]
    assert not out["metrics"]["accuracy"]["match"] and out["metrics"]["n_test"]["match"]
    assert (out["data_match"], out["metrics_match"], out["match"]) == (False, False, False)
    assert lineage.compare(recorded, rebuilt, ["data/01_raw"], tolerance=0.001)["match"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git project (params, dvc.lock, sources, metrics committed) with v1..v3 registered in
    its own MLflow store, v1 champion."""
    from textloop.pipeline import tracking

    root = tmp_path_factory.mktemp("lineage")
    (root / "params.yaml").write_text(f"deploy: {{model_name: {MODEL}}}\n")
    (root / "dvc.lock").write_text(LOCK)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "data").mkdir()
    (root / "data/00_sources.json").write_text(json.dumps({"data": {"md5": "feedbeef"}}))
    (root / "metrics").mkdir()
    for name in ("metrics.json", "evaluate.json"):  # the headline and evaluate's full report
        (root / "metrics" / name).write_text(json.dumps({"accuracy": 0.75, "f1_macro": 0.7,
                                                         "n_test": 200}))
    for cmd in (["init", "-q"], ["add", "-A"],
                ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "v"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    proj = Project(root)
    saved = mlflow.get_tracking_uri()
    exp = tracking.setup(proj)
    mlflow.set_experiment(experiment_id=exp)
    folder = testing.train_tiny(testing.synthetic(120, seed=3), root / "model")
    first = registry.get_version(MODEL, testing.register_champion(folder, MODEL, alias=None))
    client = registry.mlflow_client()  # v2, v3: the same files, no second upload (fast)
    versions = [str(first.version)]
    for _ in range(2):
        with mlflow.start_run() as run:  # one run per version, as deploy registers them
            pass
        versions.append(str(client.create_model_version(MODEL, first.source,
                                                        run_id=run.info.run_id).version))
    engine = aliases.project_engine(proj)
    registry.move_alias(MODEL, "champion", versions[0], action="deploy", reason="first",
                        actor="run r1", run_id=None, journal=aliases.db_journal(engine))
    UPLOADED["source"] = first.source  # other models of this module reuse these files
    yield proj, engine, versions
    mlflow.set_tracking_uri(saved)
    mlflow.set_registry_uri(saved)


def _champion() -> str:
    return str(registry.current_champion(registry.mlflow_client(), MODEL).version)


def test_rollback_approve_reject_force_are_recorded(project) -> None:
    _proj, engine, (v1, v2, v3) = project
    journal = aliases.db_journal(engine)
    registry.move_alias(MODEL, "champion", v2, action="deploy", reason="gate ok",
                        actor="run r2", run_id="r2", journal=journal)
    move = aliases.rollback(MODEL, journal, reason="v2 misbehaves", user="ana")
    assert (move.from_version, move.to_version, _champion()) == (v2, v1, v1)
    with pytest.raises(UserError, match="reason is required"):
        aliases.force_promote(MODEL, v3, journal, reason="  ", user="ana")
    with pytest.raises(UserError, match="not pending"):
        aliases.approve(MODEL, v3, journal, reason="ok", user="bo")
    registry.move_alias(MODEL, "pending", v3, action="pending", reason="passed",
                        actor="run r3", run_id="r3", journal=journal)
    assert _champion() == v1  # pending never takes the champion alias by itself
    aliases.reject(MODEL, v3, journal, reason="not today", user="bo")
    assert registry.pending_info(MODEL) is None
    aliases.force_promote(MODEL, v3, journal, reason="hotfix", user="cy")
    assert _champion() == v3
    tags = registry.get_version(MODEL, v3).tags
    assert (tags["approval.state"], tags["approval.by"], tags["approval.reason"]) == (
        "forced", "cy", "hotfix")
    rows = aliases.history(engine, MODEL)[::-1]  # oldest first
    got = [(m.alias, m.from_version, m.to_version, m.action, m.actor) for m in rows]
    assert got == [("champion", None, v1, "deploy", "run r1"),
                   ("champion", v1, v2, "deploy", "run r2"),
                   ("champion", v2, v1, "rollback", "ana"),
                   ("pending", None, v3, "pending", "run r3"),
                   ("pending", v3, None, "reject", "bo"),
                   ("champion", v1, v3, "force", "cy")]
    assert [m.id for m in registry.alias_history(MODEL)] == [m.id for m in rows]  # MLflow too


def test_lineage_names_commit_hashes_and_history(project) -> None:
    from textloop.pipeline.deploy_step import record_lineage

    proj, _, (v1, _, _) = project
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj.root, capture_output=True,
                            text=True, check=True).stdout.strip()
    run_id = registry.get_version(MODEL, v1).run_id
    decision = GateDecision(outcome="promoted", metric="accuracy", candidate_score=0.75,
                            candidate_version=v1, n_test=200)
    record_lineage(proj, run_id, MODEL, v1, {"prefect.flow_run_id": "flow-1"}, decision)
    info = lineage.lineage(proj, v1)
    assert (info["git_commit"], info["git_dirty"], info["prefect_flow_run_id"]) == (
        commit, False, "flow-1")
    assert lineage.out_hashes(info["dvc_lock"]) == {"data/01_raw/raw.parquet": "2222bbbb",
                                                    "data/04_shards": "3333cccc.dir"}
    assert info["dvc_lock"]["ingest"]["deps"] == {"data/00_sources.json": "1111aaaa"}
    assert info["sources"] == {"data": {"md5": "feedbeef"}}
    assert info["metrics"]["accuracy"] == 0.75
    assert info["alias_history"][0]["to_version"] == v1
    assert lineage.lineage(proj, run_id)["version"] == v1  # by MLflow run id too
    card = registry.run_text(run_id, "model_card/model_card.md")
    assert f"# Model card: {MODEL} v{v1}" in card and "| accuracy | 0.7500 | – |" in card
    assert "Small test set (200 rows)" in card
    assert "3333cccc.dir" in lineage.render(info)


def test_cli_force_without_reason_refused(project, monkeypatch) -> None:
    from textloop.cli import app
    from textloop.core.layout import project_env

    proj, _, (v1, _, _v3) = project
    monkeypatch.chdir(proj.root)
    for key, value in project_env(proj).items():  # restored after the test
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    out = runner.invoke(app, ["promote", v1, "--force", "--reason", " "])
    assert out.exit_code == 2 and "reason is required" in out.output
    out = runner.invoke(app, ["promote", v1, "--reason", "x"])
    assert out.exit_code == 2 and "--force" in out.output
    out = runner.invoke(app, ["history", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)[0]["alias"] == "champion"


def test_card_reads_cis_and_slices_when_present(tmp_path: Path) -> None:
    from textloop.pipeline import card

    inputs = {"record": {"model_name": "m", "version": "4", "params": {}}, "split": {},
              "decision": {"outcome": "promoted", "reason": "promoted: ok"}, "train": {},
              "optimize": {}, "behaviour": {"tests": {"negation": {"pass_rate": 0.5}}},
              "metrics": {"accuracy": 0.9, "n_test": 5000,
                          "ci": {"accuracy": [0.89, 0.91], "f1_macro": {"low": 0.8, "high": 0.9}},
                          "f1_macro": 0.85, "slices": {"length": {"<100": {
                              "rows": 40, "accuracy": 0.7,
                              "ci": {"accuracy": {"low": 0.55, "high": 0.85}}}}},
                          "slices_skipped": [{"column": "origin", "reason": "almost unique per row "
                                              "(5000 distinct values in 5000 rows)"}]}}
    text = card.render(inputs)
    assert "| accuracy | 0.9000 | [0.8900, 0.9100] |" in text
    assert "| f1_macro | 0.8500 | [0.8000, 0.9000] |" in text
    assert "| length=<100 | 40 | 0.7000 | [0.5500, 0.8500] |" in text
    assert "Not sliced by origin: almost unique per row" in text and "| negation | 0.5000 |" in text
    assert "<table>" in card.to_html(text)
    assert "<script>" not in card.to_html(text + "\n<script>alert(1)</script>\n")


def _versions(name: str, n: int) -> list[str]:
    """v1..vn of a new registered model, all pointing at the module's uploaded model files."""
    import mlflow

    client = registry.mlflow_client()
    client.create_registered_model(name)
    out = []
    for _ in range(n):
        with mlflow.start_run() as run:
            pass
        out.append(str(client.create_model_version(name, UPLOADED["source"],
                                                   run_id=run.info.run_id).version))
    return out


def _app(tmp: Path, name: str) -> object:
    params = Params.model_validate({"serve": {"poll_s": 0.2}})
    settings = ServeSettings(model_name=name, db_url=db.default_url(tmp / "state"), token=TOKEN,
                             params=params)
    return create_app(settings)


def _served(url: str, want: str, timeout_s: float = 30.0) -> str:
    """Poll /health until the served version is `want` (bounded); the last version seen."""
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        seen = http.get(f"{url}/health").json()["model_version"]
        if seen == want:
            return seen
        time.sleep(0.1)
    return seen


def _set(name: str, alias: str, version: str, action: str) -> None:
    registry.move_alias(name, alias, version, action=action, reason=f"gate: {action}",
                        actor="run test", journal=None)


def test_pending_never_serves_then_approve_and_rollback_hot_swap(project, tmp_path) -> None:
    name = "tiny-approval"
    v1, v2, v3 = _versions(name, 3)
    _set(name, "champion", v1, "deploy")
    _set(name, "champion", v2, "deploy")
    app = _app(tmp_path, name)
    with testing.serve_in_thread(app) as url:
        assert _served(url, v2) == v2
        _set(name, "pending", v3, "pending")
        assert app.state.watcher.refresh() is False  # the alias it follows did not move
        assert http.get(f"{url}/health").json()["model_version"] == v2
        assert http.get(f"{url}/api/aliases").json()["pending"]["version"] == v3
        body = {"reason": "looks right", "user": "ana"}
        assert http.post(f"{url}/api/versions/{v3}/approve", json=body).status_code == 401
        assert http.post(f"{url}/api/versions/{v3}/promote", json=body,
                          headers=AUTH).status_code == 422  # no force
        assert http.post(f"{url}/api/versions/{v1}/promote", headers=AUTH, json={
            "reason": " ", "user": "ana", "force": True}).status_code == 422  # no reason
        assert http.post(f"{url}/api/versions/{v1}/approve", json=body,
                          headers=AUTH).status_code == 409  # v1 is not pending
        moved = http.post(f"{url}/api/versions/{v3}/approve", json=body, headers=AUTH)
        assert moved.status_code == 200 and moved.json()["actor"] == "ana"
        assert _served(url, v3) == v3  # hot reload, same process
        back = http.post(f"{url}/api/aliases/rollback", headers=AUTH,
                          json={"reason": "v3 regressed live", "user": "bo"}).json()
        assert (back["from_version"], back["to_version"], back["action"]) == (v3, v2,
                                                                              "rollback")
        assert _served(url, v2) == v2
        history = http.get(f"{url}/api/aliases").json()["history"]
        assert [(h["alias"], h["action"], h["actor"]) for h in history] == [
            ("champion", "rollback", "bo"), ("pending", "approve", "ana"),
            ("champion", "approve", "ana")]  # the API's moves, in its database
        page = http.get(f"{url}/dashboard/versions/{v3}")
        assert page.status_code == 200 and "v3 regressed live" in page.text
        assert http.get(f"{url}/dashboard/versions/99").status_code == 404
        assert 'id="aliases"' in http.get(f"{url}/dashboard").text


@pytest.mark.browser
def test_dashboard_approve_changes_the_champion(project, tmp_path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium not installed: .ci/install-browser.sh did not run")
        pytest.skip("Chromium not installed (.ci/install-browser.sh)")
    from playwright.sync_api import expect, sync_playwright

    name = "tiny-approval-browser"
    v1, v2 = _versions(name, 2)
    _set(name, "champion", v1, "deploy")
    _set(name, "pending", v2, "pending")
    with testing.serve_in_thread(_app(tmp_path, name)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/dashboard")
            expect(page.locator("#champion-version")).to_have_text(f"v{v1}")
            expect(page.locator("#pending-line")).to_have_attribute("data-pending", v2)
            page.fill("#decision-user", "ana")
            page.fill("#decision-reason", "reviewed the card")
            page.fill("#token", TOKEN)  # the session's one sign-in
            page.click("#approve-button")
            expect(page.locator("#decision-status")).to_have_attribute("data-ok", "1")
            expect(page.locator("#pending-line")).to_have_attribute("data-pending", "")
            expect(page.locator("#history-body")).to_contain_text("reviewed the card")
            assert _served(url, v2) == v2
            page.reload()
            expect(page.locator("#champion-version")).to_have_text(f"v{v2}")
        finally:
            browser.close()
