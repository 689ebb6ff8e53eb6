"""A run that trains nothing must not pay for the model code: what the CLI's run path, the flow
and the deploy step import keeps scikit-learn (and torch) out."""

from __future__ import annotations

import json
import subprocess
import sys

RUN_PATH = ["textloop.cli", "tasks.optimize.search_space", "tasks.ingest", "flows.lifecycle",
            "textloop.pipeline.deploy_step", "textloop.pipeline.dag", "textloop.pipeline.params_diff"]


def test_the_run_path_does_not_import_the_model_libraries():
    code = (f"import importlib, json, sys\nfor m in {RUN_PATH!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in ('sklearn', 'torch', 'optuna', 'matplotlib') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
