"""`textloop reproduce` on a small real project: the lifecycle flow registers v1 (lineage record
and model card written at deploy), lineage names its commit and dvc.lock hashes, and a rebuild in
a temporary git worktree matches its data hashes and test metrics exactly (seeded baseline).
Slow (two full pipeline runs); the comparison rule has fast tests in test_lineage."""

from __future__ import annotations

import json
import subprocess

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.e2e_project import isolate_env, make_project, sample_csv


@pytest.mark.slow
def test_lineage_and_reproduce_of_a_lifecycle_version(tmp_path, monkeypatch):
    from flows.lifecycle import lifecycle, prepare_workspace
    from textloop.core.layout import Project
    from textloop.pipeline import lineage, registry
    from textloop.pipeline.reproduce import reproduce

    root = make_project(tmp_path / "proj", "sample.csv", **{"deploy.approval": "manual"})
    sample_csv(root / "sample.csv", 300)
    isolate_env(monkeypatch, root)
    project = Project(root)
    with prefect_test_harness(server_startup_timeout=120):
        first = lifecycle(label_col="sentiment")
    assert first["deploy"]["outcome"] == "promoted"  # no champion yet: approval not needed
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                            text=True, check=True).stdout.strip()
    info = lineage.lineage(project, "1")
    assert info["git_commit"] == commit and info["prefect_flow_run_id"] == first["flow_run_id"]
    lock = lineage.dvc_lock_hashes((root / "dvc.lock").read_text())
    assert info["dvc_lock"] == lock and lineage.out_hashes(lock)["data/04_shards"]
    assert info["alias_history"][0]["action"] == "deploy"
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
