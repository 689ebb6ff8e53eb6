"""`textloop reproduce` on a small real project: the lifecycle flow registers v1 (lineage record
and model card written at deploy), lineage names its commit and dvc.lock hashes, and a rebuild in
a temporary git worktree matches its data hashes and test metrics exactly (seeded baseline).
Slow (two full pipeline runs); the comparison rule has fast tests in test_lineage."""

from __future__ import annotations

import json
import subprocess

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.support.e2e_project import isolate_env, make_project, sample_csv


@pytest.mark.slow
def test_lineage_and_reproduce_of_a_lifecycle_version(tmp_path, monkeypatch):
    from flows.lifecycle import lifecycle, prepare_workspace
    from textloop.core.layout import Project
    from textloop.loop.aliases import approve, db_journal, project_engine
    from textloop.pipeline import lineage, registry
    from textloop.pipeline.reproduce import reproduce

    root = make_project(tmp_path / "proj", "sample.csv", **{"deploy.approval": "manual"})
    sample_csv(root / "sample.csv", 300)
    isolate_env(monkeypatch, root)
    project = Project(root)
    with prefect_test_harness(server_startup_timeout=120):
        first = lifecycle(label_col="sentiment")
    assert first["deploy"]["outcome"] == "pending" and first["deploy"]["version"] is None
    assert registry.pending_info(registry.served_model(project)[0])["version"] == "1"
    name = registry.served_model(project)[0]
    approve(name, "1", db_journal(project_engine(project)), reason="first model", user="ana")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                            text=True, check=True).stdout.strip()
    info = lineage.lineage(project, "1")
    assert info["git_commit"] == commit and info["prefect_flow_run_id"] == first["flow_run_id"]
    lock = lineage.dvc_lock_hashes((root / "dvc.lock").read_text())
    assert info["dvc_lock"] == lock and lineage.out_hashes(lock)["data/04_shards"]
    assert [(m["alias"], m["action"], m["actor"]) for m in info["alias_history"]] == [
        ("pending", "pending", f"run {info['mlflow_run_id']}"), ("champion", "approve", "ana"),
        ("pending", "approve", "ana")]
    card = registry.run_text(info["mlflow_run_id"], "model_card/model_card.md")
    assert "## Gate decision" in card and "| train |" in card

    report = reproduce(project, "1", prepare_workspace)
    assert report["data_match"], json.dumps(report["paths"], indent=1)
    assert report["metrics_match"], json.dumps(report["metrics"], indent=1)
    assert report["metrics"]["accuracy"]["recorded"] == json.loads(
        (root / "metrics/metrics.json").read_text())["accuracy"]
    listed = subprocess.run(["git", "worktree", "list"], cwd=root, capture_output=True,
                            text=True, check=True).stdout
    assert len(listed.splitlines()) == 1  # the temporary worktree is gone
