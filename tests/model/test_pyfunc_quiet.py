"""The pyfunc declares its types as MLflow asks and registering prints nothing: neither
textloop's registration nor a plain MLflow client loading the model shows MLflow's advice."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd

from tests.support.fixtures import mlflow_sandbox, synthetic, train_tiny
from textloop.core.model import read_meta
from textloop.pipeline.pyfunc import TextClassifierPyfunc


def test_predict_is_typed_with_a_hint_mlflow_takes_without_validation():
    hints = inspect.get_annotations(TextClassifierPyfunc.predict, eval_str=True)
    assert hints["model_input"] is pd.DataFrame and hints["return"] is pd.DataFrame


def test_register_and_a_plain_load_print_no_advice(tmp_path, capfd):
    import mlflow

    from textloop.pipeline.registry import register

    folder = train_tiny(synthetic(60, seed=0), tmp_path / "m")
    with mlflow_sandbox(tmp_path / "mlflow") as uri:
        with mlflow.start_run() as run:
            pass
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            version = register("quiet-model", folder, read_meta(folder),
                               np.array([1, 2], dtype=np.uint64), run.info.run_id, {}, {})
        shown = capfd.readouterr()
        assert "Successfully registered" not in shown.err + shown.out
        assert "Created version" not in shown.err + shown.out and "it/s]" not in shown.err
        assert not [w for w in caught if "type hint" in str(w.message)]
        code = (f"import mlflow, pandas as pd; mlflow.set_tracking_uri({uri!r}); "
                f"m = mlflow.pyfunc.load_model('models:/quiet-model/{version.version}'); "
                "print(m.predict(pd.DataFrame({'text': ['good fun']}))['label'].tolist())")
        proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True,
                              text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "type hints" not in proc.stderr and "UserWarning" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() in ("['pos']", "['neg']")
