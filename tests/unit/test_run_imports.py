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


def test_deploy_imports_neither_scipy_stats_nor_sklearn():
    """deploy reads the test rows' slices through evaluate's modules, scores the candidate and
    looks for the model's global explanation file; scipy.stats and scikit-learn (~0.5 and
    ~0.8 CPU-s to import) are for evaluate's intervals, the champion comparison and the model
    code, not for the flow."""
    code = ("import importlib, sys\nfor m in ('flows.lifecycle', 'textloop.pipeline.deploy_step', "
            "'tasks.evaluate.slices', 'tasks.deploy'): importlib.import_module(m)\n"
            "from pathlib import Path\n"
            "from textloop.pipeline.registry import explain_artifact\n"
            "explain_artifact(Path('.'))\n"
            "from tasks.evaluate.metrics import score\n"
            "score(['a', 'b'], ['a', 'a'])\n"
            "print('scipy.stats' in sys.modules or 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


NO_OP_PATH = ["textloop.cli", "textloop.cli.prefect_server", "textloop.services",
              "flows.run_arguments", "flows.nothing_changed", "textloop.pipeline.dag"]


def test_what_decides_a_no_op_rerun_imports_neither_prefect_nor_mlflow():
    """A rerun with nothing changed costs what `dvc repro` does: the CLI's run command, the
    run's arguments and the no-op decision leave Prefect, MLflow and pandas unimported (DVC is
    imported when the decision is asked)."""
    code = (f"import importlib, json, sys\nfor m in {NO_OP_PATH!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in ('prefect', 'mlflow', 'pandas', 'sklearn', "
            "'torch', 'dvc') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
