"""params.yaml edited while a run goes: DVC reads params.yaml again when it writes dvc.lock after
a stage's command, so the lock would record values the stage never used, and the stages after
the edit would read the edited values. Every stage checks the settings files against those the
run started with (or the stage, outside a run), at its start and before DVC records it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.e2e_project import make_project, sample_csv
from textloop.core.config import RUN_DIGEST_ENV, settings_files_digest
from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.pipeline.dag import record_interpreter

MESSAGE = "params.yaml or textloop.yaml changed while this run was going"


def _edit_c(params: Path) -> None:
    """The user's edit: train.tfidf.C 16.0 -> 4.0."""
    text = params.read_text()
    assert "  C: 16.0" in text
    params.write_text(text.replace("  C: 16.0", "  C: 4.0", 1))


@pytest.fixture
def project(tmp_path) -> Path:
    root = make_project(tmp_path / "p", str(sample_csv(tmp_path / "s.csv", 60)))
    record_interpreter(Project(root))
    return root


def test_a_later_stage_refuses_settings_edited_after_the_run_started(project):
    """The run started with C 16.0; the edit lands before its next stage: `dvc repro` of that
    stage (the real DVC CLI, as the flow runs it) fails with one line and records nothing."""
    params = project / "params.yaml"
    started = settings_files_digest(params)
    _edit_c(params)
    env = {**os.environ, RUN_DIGEST_ENV: started}
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "sources"], cwd=project, env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode != 0 and MESSAGE in out.stdout + out.stderr
    assert not (project / "dvc.lock").exists()
    env.pop(RUN_DIGEST_ENV)  # a new run starts with the edited values
    subprocess.run([sys.executable, "-m", "dvc", "repro", "sources"], cwd=project, env=env,
                   check=True, capture_output=True)
    assert "sources" in (project / "dvc.lock").read_text()


def test_an_edit_while_a_stage_runs_fails_that_stage_before_dvc_records_it(project, monkeypatch):
    """Outside a run (`dvc repro` by hand) the stage compares with what it started with."""
    from textloop.pipeline import stages

    params = project / "params.yaml"
    monkeypatch.delenv(RUN_DIGEST_ENV, raising=False)
    edits = []

    def sources(p: Project) -> None:  # the stage's work, during which the user saves an edit
        if not edits:
            _edit_c(p.params_path)
        edits.append(p)

    sources.__module__ = stages.__name__  # a stage the dispatcher wires
    monkeypatch.setattr(stages, "sources", sources)
    with pytest.raises(UserError, match=MESSAGE):
        stages.run_stage("sources", Project(project))
    assert "  C: 4.0" in params.read_text() and len(edits) == 1
    stages.run_stage("sources", Project(project))  # unchanged while it ran: fine
    assert len(edits) == 2
