"""Loading a saved model folder by its kind, and the wrapper that applies the training-time text
normalisation before every prediction (what the registered pyfunc and evaluate use)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from textloop.core.errors import UserError
from textloop.core.model import TextClassifier, proba_frame, read_meta
from textloop.core.text import normalize_text


def _load_sklearn(folder: Path) -> TextClassifier:
    from tasks.train import load_sklearn

    return load_sklearn(folder)


def _load_torch(folder: Path) -> TextClassifier:
    from tasks.transformer import load_classifier  # lazy: the baseline never imports torch

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
        self.meta = read_meta(folder)
        self.inner = load_classifier(folder)
        self.classes_ = [str(c) for c in self.meta["classes"]]
        clean_cfg = self.meta.get("clean", {})
        kinds = self.meta.get("redact") or []  # clean.redact at training (tasks.redact.model_meta)
        if kinds:
            from tasks.redact import redact

            self._normalize = lambda t: redact(normalize_text(t, **clean_cfg), kinds)[0]
        else:
            self._normalize = lambda t: normalize_text(t, **clean_cfg)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.inner.predict_proba([self._normalize(t) for t in texts])

    def predict_frame(self, texts: list[str]) -> pd.DataFrame:
        return proba_frame(self.classes_, self.predict_proba(texts))
