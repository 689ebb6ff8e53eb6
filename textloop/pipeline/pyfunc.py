"""The MLflow pyfunc flavor of every textloop model (baseline and transformers alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

from textloop.core.model import to_texts
from textloop.pipeline.models import NormalizingClassifier


class TextClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Raw text in; label, confidence and proba_<class> columns out."""

    def load_context(self, context: Any) -> None:
        self.model = NormalizingClassifier(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input, params=None):  # no hints: MLflow would validate them
        """A DataFrame with a `text` column, a list of str, or one str."""
        return self.model.predict_frame(to_texts(model_input))
