"""A rerun is a no-op only against a completed run's record and with params left as they are;
its deploy record says nothing was registered and names the version the last run judged."""

from __future__ import annotations

import json

from flows.nothing_changed import _candidate, _unchanged_deploy
from tests.support.e2e_project import make_project
from textloop.core.layout import Project

LAST_DEPLOY = {"registered": False, "model_name": "textloop-sample", "version": "1",
               "candidate_version": "1", "champion_version": "1", "promoted": False,
               "alias": "champion", "outcome": "unchanged",
               "reason": "unchanged, already version 1 (it is the champion)"}


def test_the_no_op_deploy_record_names_the_judged_version_and_registers_nothing():
    deploy = _unchanged_deploy({"deploy": {**LAST_DEPLOY, "registered": True, "promoted": True}})
    assert deploy == {
        "model_name": "textloop-sample", "version": "1", "candidate_version": "1",
        "champion_version": "1", "alias": "champion", "registered": False, "promoted": False,
        "outcome": "unchanged",
        "reason": "unchanged, already version 1 (nothing changed since the last run)",
        "summary": {"model": "textloop-sample v1", "promoted": "false",
                    "deploy": "unchanged, already version 1 (nothing changed since the last run)"}}


def test_only_a_completed_run_with_its_dvc_outputs_digest_and_unchanged_params_is_compared(tmp_path):
    project = Project(make_project(tmp_path / "p", "sample.csv"))
    assert _candidate(project, {}) is None  # no run yet
    last = {"state": "completed", "dvc_outputs_sha256": "ab" * 32, "deploy": LAST_DEPLOY}
    project.last_run_path.parent.mkdir(parents=True, exist_ok=True)
    for record in ({**last, "state": "failed"}, {**last, "dvc_outputs_sha256": None},
                   {k: v for k, v in last.items() if k != "deploy"}):
        project.last_run_path.write_text(json.dumps(record))
        assert _candidate(project, {}) is None
    project.last_run_path.write_text(json.dumps(last))
    assert _candidate(project, {}) == last
    assert _candidate(project, {"ingest.source": "sample.csv"}) == last  # the same value again
    assert _candidate(project, {"train.tfidf.C": 3.0}) is None  # an edit: the flow writes it
