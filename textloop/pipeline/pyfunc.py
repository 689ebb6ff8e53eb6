"""The MLflow pyfunc flavor of every textloop model (baseline and transformers alike).

The logged model is self-contained: a signature (one string column `text` in; `label`,
`confidence` and one `proba_<class>` per class out), strict input validation, the textloop code
it needs bundled with `code_paths`, and pinned requirements, so `mlflow.pyfunc.load_model` works
in an environment that has only those requirements (no textloop installed).

It holds no pickle: the wrapper is logged as code (MODEL_CODE, MLflow's "models from code") and
the model itself is the saved folder (JSON description and arrays). Versions logged before
hold a cloudpickled `TextClassifierPyfunc` that names this module, so the class keeps this name
and module for them; it has no state of its own, both kinds load the folder in load_context."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from textloop.core.model import EMPTY_TEXT, empty_text
from textloop.pipeline.models import NormalizingClassifier

TEXT_COLUMN = "text"
# what the bundled code imports, beyond mlflow itself (tasks.train.baseline imports textloop.core.config)
_CORE_REQUIREMENTS = ["pandas", "numpy", "pydantic", "pyyaml", "ruamel.yaml"]
_REQUIREMENTS = {"sklearn": ["scikit-learn", "scipy", "joblib"],
                 "torch": ["torch", "transformers", "tokenizers", "safetensors"]}
_BUNDLED = ("textloop", "tasks")  # top-level packages copied next to the model
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "templates", "migrations")
MODEL_CODE = Path(__file__).with_name("pyfunc_model_code.py")  # what MLflow runs to load a model


class ModelInputError(ValueError):
    """The input is not one string per row in a `text` column (or a list of strings)."""


def to_texts(model_input: Any) -> list[str]:
    """Texts from a DataFrame with a `text` column, a {"text": [...]} dict (which MLflow's schema
    enforcement hands over as one row holding the list), a list/Series of str, or one str. Anything else, or a value that is not a string, raises ModelInputError naming
    the row (0-based) and the type found."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise ModelInputError(f"model input needs a {TEXT_COLUMN!r} column "
                                  f"(columns: {[str(c) for c in model_input.columns]})")
        values = model_input[TEXT_COLUMN].tolist()
        if len(values) == 1 and (isinstance(values[0], list | tuple) or hasattr(values[0], "ndim")):
            values = list(values[0])  # MLflow turns {"text": [a, b]} into one row holding a list
    elif isinstance(model_input, dict):
        if set(model_input) != {TEXT_COLUMN}:
            raise ModelInputError(f"model input dict needs exactly the key {TEXT_COLUMN!r} "
                                  f"(keys: {sorted(map(str, model_input))})")
        value = model_input[TEXT_COLUMN]
        values = [value] if isinstance(value, str) else list(value)
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, Sequence | pd.Series) or hasattr(model_input, "tolist"):
        values = list(model_input.tolist() if hasattr(model_input, "tolist") else model_input)
    else:
        raise ModelInputError(f"unsupported model input type {type(model_input).__name__}")
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise ModelInputError(f"row {row}: {TEXT_COLUMN!r} must be a string, "
                                  f"got {type(value).__name__} {str(value)[:40]!r}")
    return values


class TextClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Raw text in; label, confidence and proba_<class> columns out. Stable name: versions
    logged before models from code pickled it as textloop.pipeline.pyfunc.TextClassifierPyfunc."""

    def load_context(self, context: Any) -> None:
        self.model = NormalizingClassifier(Path(context.artifacts["model_dir"]))

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """A DataFrame with a `text` column (what MLflow hands over after enforcing the
        signature); called directly, also {"text": [...]}, a list of str, or one str. The
        DataFrame hints are the ones MLflow takes without inferring a schema from them (the
        signature stays the contract), and without them MLflow warns on every load. A text
        that is empty after the model's normalisation is refused (ModelInputError naming the
        row and `empty_text`), as the API and `textloop predict` refuse it."""
        texts = to_texts(model_input)
        refuse_empty(texts, self.model.meta.get("clean", {}))
        return self.model.predict_frame(texts)


def refuse_empty(texts: Sequence[str], clean: dict[str, Any]) -> None:
    """Raise ModelInputError for the first text the model cannot answer (core.model.empty_text)."""
    for row, text in enumerate(texts):
        if empty_text(text, clean):
            raise ModelInputError(f"row {row}: {EMPTY_TEXT}: {TEXT_COLUMN!r} is empty after "
                                  "normalisation (blank, invisible characters or markup only); "
                                  "no class can be predicted for it")


def signature(classes: Sequence[str]) -> Any:
    """Input: one string column `text`; output: label, confidence, proba_<class> per class."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "label"), ColSpec("double", "confidence"),
               *(ColSpec("double", f"proba_{c}") for c in classes)]
    return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]),
                          outputs=Schema(outputs))


def pip_requirements(kind: str, redacts: bool = False) -> list[str]:
    """Pinned requirements of a model kind (explicit: inference would cost ~8 s per log); a
    model that redacts its input (clean.redact) also needs presidio-analyzer."""
    names = ["mlflow", *_CORE_REQUIREMENTS, *_REQUIREMENTS.get(kind, []),
             *(["presidio-analyzer"] if redacts else [])]
    return [f"{n}=={metadata.version(n)}" for n in names]


def bundle_code(dest: Path) -> list[str]:
    """Copy textloop's own packages (sources only) into `dest`; the paths for `code_paths`."""
    import tasks
    import textloop

    out = []
    for module in (textloop, tasks):
        src = Path(module.__file__).parent
        shutil.copytree(src, dest / src.name, ignore=_SKIP)
        out.append(str(dest / src.name))
    return out


def log_pyfunc(model_dir: Path, meta: dict[str, Any], metadata_: dict[str, Any],
               extra_artifacts: dict[str, str] | None = None) -> Any:
    """Log a model folder as the textloop pyfunc in the active MLflow run; its ModelInfo.
    `extra_artifacts` (name -> local path) are stored beside it (e.g. the training-row hashes)."""
    artifacts = {"model_dir": str(model_dir), **(extra_artifacts or {})}
    with tempfile.TemporaryDirectory(prefix="textloop-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL_CODE),
            artifacts=artifacts, code_paths=bundle_code(Path(tmp)),
            pip_requirements=pip_requirements(meta["kind"], bool(meta.get("redact"))),
            signature=signature(meta["classes"]),
            metadata=metadata_)


def load_registered(uri: str) -> NormalizingClassifier:
    """The classifier behind a logged or registered model (any MLflow URI or local folder), of
    either kind: models from code, or the cloudpickled wrapper of versions logged before."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().model
