"""status and predict name the model they use and why: after a failed `--data`
run on a new source, the champion still being served is the one reported, not "no champion"."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tests.support.e2e_project import isolate_env, make_project
from tests.support.fixtures import register_champion, synthetic, train_tiny
from textloop.core.config import apply_overrides
from textloop.core.layout import Project
from textloop.pipeline import tracking
from textloop.pipeline.registry import champion_info, served_model
from textloop.pipeline.status import status


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project whose first source (a.csv) has a champion, v1 of textloop-data-a."""
    root = make_project(tmp_path / "p", str(tmp_path / "data/a.csv"))
    isolate_env(monkeypatch, root)
    project = Project(root)
    tracking.setup(project)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        register_champion(train_tiny(synthetic(60, seed=0), tmp_path / "m"), "textloop-data-a")
    return project


def _last_run(project: Project, state: str, model: str) -> None:
    """A run record; a completed run also deployed (metrics/deploy.json names its model)."""
    project.last_run_path.parent.mkdir(parents=True, exist_ok=True)
    project.last_run_path.write_text(json.dumps({"state": state}))
    if state == "completed":
        decision = project.path(project.params().paths.deploy_decision)
        decision.parent.mkdir(parents=True, exist_ok=True)
        decision.write_text(json.dumps({"model_name": model, "outcome": "promoted"}))


def test_failed_run_on_a_new_source_keeps_naming_the_served_champion(project: Project) -> None:
    _last_run(project, "completed", "textloop-data-a")
    assert served_model(project)[0] == "textloop-data-a"
    apply_overrides(project.params_path, {"ingest.source": str(project.root / "b.csv")})
    name, why = served_model(project)
    assert name == "textloop-data-a" and "last run that deployed" in why and "textloop-p-b" in why
    _last_run(project, "failed", "textloop-data-a")  # a failed --data run writes a failed record
    assert served_model(project)[0] == "textloop-data-a"  # and does not hide the champion
    info = status(project)
    assert info["champion"]["version"] == "1" and info["champion"]["model_name"] == name
    assert info["feedback_rows"] == 0 and info["label_queue_rows"] == 0


def test_no_deploying_run_means_no_champion_for_the_new_source(project: Project) -> None:
    _last_run(project, "failed", "textloop-data-a")
    apply_overrides(project.params_path, {"ingest.source": str(project.root / "b.csv")})
    name, why = served_model(project)
    assert name == "textloop-p-b" and why == f"derived from ingest.source {str(project.root / 'b.csv')!r}"
    assert champion_info(project) is None


def test_explicit_model_name_wins(project: Project) -> None:
    apply_overrides(project.params_path, {"deploy.model_name": "textloop-data-a"})
    assert served_model(project) == ("textloop-data-a", "deploy.model_name in params.yaml")
