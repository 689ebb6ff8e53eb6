"""Loading a saved model folder by its kind, and the wrapper that applies the training-time text
normalisation before every prediction (what the registered pyfunc and evaluate use)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.errors import UserError
from textloop.core.model import TextClassifier, can_explain, proba_frame, read_meta
from textloop.core.text import normalize_text
from textloop.core.textspans import normalize_with_offsets, source_span


def _load_sklearn(folder: Path) -> TextClassifier:
    """Load a baseline model folder (scikit-learn is imported only for this kind)."""
    from tasks.train.baseline import load_sklearn

    return load_sklearn(folder)


def _load_torch(folder: Path) -> TextClassifier:
    """Load a transformer model folder (torch is imported only for this kind)."""
    from tasks.train.transformer.torch_classifier import load_classifier  # lazy: baseline, no torch

    return load_classifier(folder)


# kind (textloop_model.json "kind") -> loader; a new model kind adds one line here
LOADERS: dict[str, Callable[[Path], TextClassifier]] = {"sklearn": _load_sklearn,
                                                        "torch": _load_torch}


def load_classifier(folder: Path) -> TextClassifier:
    """Load any saved model folder through the loader of its kind.

    Raises UserError when the folder's kind has no loader."""
    meta = read_meta(folder)
    try:
        loader = LOADERS[meta["kind"]]
    except KeyError:
        raise UserError(f"{folder}: unknown model kind {meta['kind']!r} "
                        f"(known: {', '.join(LOADERS)})") from None
    return loader(Path(folder))


class NormalizingClassifier:
    """A saved classifier plus the exact text normalization it was trained with."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = read_meta(folder)
        self.inner = load_classifier(folder)
        self.classes_ = [str(c) for c in self.meta["classes"]]
        clean_cfg = self.meta.get("clean", {})
        kinds = self.meta.get("redact") or []  # clean.redact at training (tasks.clean.redact.model_meta)
        if kinds:
            from tasks.clean.redact import redact

            self._normalize = lambda t: redact(normalize_text(t, **clean_cfg), kinds)[0]
        else:
            self._normalize = lambda t: normalize_text(t, **clean_cfg)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.inner.predict_proba([self._normalize(t) for t in texts])

    def predict_frame(self, texts: list[str]) -> pd.DataFrame:
        return proba_frame(self.classes_, self.predict_proba(texts))

    def explain(self, text: str, **options: Any) -> dict[str, Any]:
        """The inner model's explanation of the normalised text, its spans moved back onto the
        text as given (HTML, entities, extra spaces, invisible characters): see
        textloop.core.model.Explainable. Raises UserError when the model kind cannot explain."""
        if not can_explain(self.inner):
            raise UserError(f"model kind {self.meta['kind']!r} has no explain()")
        normalized, offsets = normalize_with_offsets(text, **self.meta.get("clean", {}))
        if not normalized:
            raise UserError("the text is empty after normalisation: nothing to explain")
        out = self.inner.explain(normalized, **options)
        for span in out["spans"]:
            span["start"], span["end"] = source_span(offsets, span["start"], span["end"])
            span["text"] = text[span["start"]:span["end"]]
        for feature in out["features"]:
            feature["spans"] = [list(source_span(offsets, a, b)) for a, b in feature["spans"]]
            feature["text"] = [text[a:b] for a, b in feature["spans"]]
        out["normalized"] = normalized
        return out

    def global_view(self) -> dict[str, Any] | None:
        """The per-class top n-grams saved with the model (baseline), or None."""
        from textloop.core.model import GLOBAL_FILE

        path = self.folder / GLOBAL_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
