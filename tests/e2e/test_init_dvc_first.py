"""A project made by `textloop init` works through DVC from its first command: every folder
dvc.yaml names as a dependency that no stage writes (the feedback store, the tombstone list)
exists, so `dvc status` reports no missing dependency and `dvc exp run -S KEY=VALUE` runs
before any `textloop run` (the real `textloop` and `dvc` command lines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.e2e_project import REPO, sample_csv


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command in `root` with this checkout's code first on the path; exit 0 asserted."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES": "0"}
    proc = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True,
                          check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _init(tmp_path: Path, *extra: str) -> Path:
    root = tmp_path / "fresh"
    _run(tmp_path, sys.executable, "-m", "textloop", "init", str(root), *extra)
    return root


def _missing_deps(status: dict) -> list[str]:
    """Deps `dvc status` reports deleted that no stage writes (not at or under any out)."""
    deps, outs = [], []
    for entries in status.values():
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            deps += [path for path, state in entry.get("changed deps", {}).items()
                     if state == "deleted"]
            outs += list(entry.get("changed outs", {}))
    return sorted({d for d in deps
                   if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in outs)})


def test_init_leaves_no_missing_dependency(tmp_path: Path) -> None:
    root = _init(tmp_path)
    for folder in ("data/07_feedback", "data/08_tombstones"):
        assert (root / folder).is_dir(), folder
    proc = _run(root, sys.executable, "-m", "dvc", "status", "--json")
    status = json.loads(proc.stdout)
    assert "ingest" in status  # nothing ran yet: every stage is to run
    assert _missing_deps(status) == []
    clean = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                           text=True, check=True)
    assert clean.stdout == "", "init's folders must not leave the project dirty"


@pytest.mark.slow
def test_dvc_exp_run_is_a_first_command(tmp_path: Path) -> None:
    data = sample_csv(tmp_path / "reviews.csv", 600)
    root = _init(tmp_path, "--data", str(data))
    _run(root, sys.executable, "-m", "dvc", "exp", "run", "-S", "optimize.n_trials=1",
         "-S", "train.tfidf.C=8")
    assert json.loads((root / "metrics" / "metrics.json").read_text())["accuracy"] > 0.3
