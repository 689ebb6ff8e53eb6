"""A user's explicit choice, through the real CLIs: `textloop run --set train.tfidf.C=3` and
`dvc exp run -S train.tfidf.C=8` each produce a model with that C (optimize searches only what
the user left to it, and says so), and DVC's own views of the project stay readable at 120
columns."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.test_e2e_flow import _cli_env, _json_tail, _ok
from tests.support.e2e_project import make_project, sample_csv
from textloop.core.model import read_meta

# measured on this project (CSV header): 83 = 5 (experiment, rev, typ, created, parent) + 4
# headline metrics (no CI columns: the e2e budget has no resamples) + 56 params + 18 stage
# dependencies; the CI pair adds 2; the per-slice and per-class tables add none
MAX_EXP_SHOW_COLUMNS = 90


def _final_c(root) -> float:
    """The C of the model optimize handed to evaluate (its saved settings)."""
    return float(read_meta(root / "data/05_models/final")["train"]["tfidf"]["C"])


def _commit(root, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                    message], cwd=root, check=True)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_set_c_is_pinned_by_textloop_run_and_by_dvc_exp_run(tmp_path):
    root = make_project(tmp_path / "proj", "sample.csv", **{"ingest.label_col": "sentiment",
                                                            "optimize.n_trials": 3})
    sample_csv(root / "sample.csv", 150)
    env = _cli_env()
    textloop = [sys.executable, "-m", "textloop"]
    dvc = [sys.executable, "-m", "dvc"]
    first = _json_tail(_ok([*textloop, "run", "--json"], root, env))
    assert "C" in first["optimize"]["searched"] and first["optimize"]["pinned"] == {}
    _commit(root, "baseline")

    shown = _ok([*dvc, "metrics", "show"], root, env)
    assert max(len(line) for line in shown.splitlines()) <= 120, shown
    assert "metrics/metrics.json" in shown and "origin" not in shown
    header = _ok([*dvc, "exp", "show", "--no-pager", "--csv"], root, env).splitlines()[0]
    assert len(header.split(",")) <= MAX_EXP_SHOW_COLUMNS, header

    out = _json_tail(_ok([*textloop, "run", "--json", "--set", "train.tfidf.C=3"], root, env))
    assert _final_c(root) == 3.0
    assert out["optimize"]["pinned"] == {"C": 3.0}
    assert "C" not in out["optimize"]["searched"] and out["optimize"]["searched"]
    human = _ok([*textloop, "run"], root, env)  # nothing changed: the summary still says it
    assert "pinned by you: C=3.0" in human, human

    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=root, check=True)
    _ok([*dvc, "exp", "run", "-S", "train.tfidf.C=8"], root, env)
    assert _final_c(root) == 8.0
    report = json.loads((root / "metrics/optimize.json").read_text())
    assert report["pinned"] == {"C": 8.0} and "C" not in report["searched"]
