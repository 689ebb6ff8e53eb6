"""The MLflow pyfunc flavor of every textloop model (baseline and transformers alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from textloop.model import NormalizingClassifier, to_texts


class TextClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Raw text in; label, confidence and proba_<class> columns out."""

    def load_context(self, context: Any) -> None:
        self.model = NormalizingClassifier(Path(context.artifacts["model_dir"]))

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> pd.DataFrame:
        return self.model.predict_frame(to_texts(model_input))
