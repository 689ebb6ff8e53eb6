"""A registered model holds no pickle: MLflow loads it from the code stored with it (models from
code) and the saved model folder (a JSON description and arrays), also where MLflow is told to
refuse pickles. Versions logged before, as a cloudpickled wrapper naming
textloop.pipeline.pyfunc, still load through the loader of registered versions and predict the
same as the folder inside them."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.support.fixtures import mlflow_sandbox, synthetic, train_tiny
from textloop.core.model import LEGACY_FILE, read_meta, write_meta
from textloop.pipeline.models import NormalizingClassifier
from textloop.pipeline.pyfunc import (
    TextClassifierPyfunc,
    bundle_code,
    load_registered,
    log_pyfunc,
    signature,
)

TEXTS = ["great fun, loved it", "boring, hated it", "loved the story", "hated the story"]
OLD_ESTIMATOR = Path(__file__).parents[1] / "support" / "old_module_paths_model.joblib"


def _pickles(folder: Path) -> list[str]:
    """Files under `folder` that are pickles (protocol 2+ starts with 0x80) or named as one."""
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and (
        p.suffix in (".pkl", ".pickle", ".joblib") or p.read_bytes()[:1] == b"\x80")]


def test_a_logged_model_holds_no_pickle_and_loads_with_pickles_refused(tmp_path, monkeypatch):
    folder = train_tiny(synthetic(60, seed=0), tmp_path / "m")
    with mlflow_sandbox(tmp_path / "mlflow"), mlflow.start_run():
        info = log_pyfunc(folder, read_meta(folder), {"labels": ["neg", "pos"]})
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri,
                                                          dst_path=str(tmp_path / "dl")))
    assert _pickles(local) == []
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor and Path(flavor["model_code_path"]).name == \
        "pyfunc_model_code.py"
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    clf = load_registered(str(local))
    np.testing.assert_allclose(clf.predict_proba(TEXTS),
                               NormalizingClassifier(folder).predict_proba(TEXTS))


def _old_folder(tmp_path: Path, estimator: str) -> Path:
    """A model folder as deploy logged it: the current format, or the joblib pickle of before."""
    if estimator == "arrays":
        return train_tiny(synthetic(60, seed=0), tmp_path / "m")
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(OLD_ESTIMATOR, folder / LEGACY_FILE)
    write_meta(folder, "sklearn", ["neg", "pos"], {"clean": {}})
    return folder


@pytest.mark.parametrize("estimator", ["arrays", "joblib"])
def test_a_version_logged_as_a_pickled_wrapper_still_loads_and_predicts_the_same(
        tmp_path, estimator):
    """Logged the way deploy logged every version before models from code: the wrapper
    instance cloudpickled, the textloop code bundled beside it."""
    from textloop.serve.champion import load_version

    folder = _old_folder(tmp_path, estimator)
    with mlflow_sandbox(tmp_path / "mlflow"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model", python_model=TextClassifierPyfunc(),
                artifacts={"model_dir": str(folder)}, code_paths=bundle_code(tmp_path / "code"),
                pip_requirements=["scikit-learn"], signature=signature(["neg", "pos"]))
        version = mlflow.register_model(info.model_uri, "old-model").version
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri,
                                                          dst_path=str(tmp_path / "dl")))
        assert b"textloop.pipeline.pyfunc" in (local / "python_model.pkl").read_bytes()
        loaded = load_version("old-model", str(version), None, {})
        frame = mlflow.pyfunc.load_model(f"models:/old-model/{version}").predict(
            pd.DataFrame({"text": TEXTS}))
    direct = NormalizingClassifier(folder)
    np.testing.assert_allclose(loaded.classifier.predict_proba(TEXTS), direct.predict_proba(TEXTS))
    assert frame["label"].tolist() == direct.predict_frame(TEXTS)["label"].tolist()
    assert frame["label"].tolist()[:2] == ["pos", "neg"]
