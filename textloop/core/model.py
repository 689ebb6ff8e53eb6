"""The model contract: any classifier with `classes_` + `predict_proba(texts)`, saved as a folder,
served as one MLflow pyfunc that takes raw text (normalization inside)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from textloop.core.text import normalize_text

META_FILE = "textloop_model.json"


class TextClassifier(Protocol):
    """What train/optimize/evaluate/deploy/serve rely on."""

    classes_: Sequence[str]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


class Explainable(Protocol):
    """Optional part of the contract: why one text got its prediction.

    `explain(text, **options)` returns {kind, method, classes, proba, label, target, base,
    score, completeness_error, spans: [{start, end, text, weight}], features: [{feature, weight,
    spans, ...}], top_for, top_against}; spans are [start, end) character ranges of `text`,
    weights are contributions to the target class's logit (the predicted class by default).
    Options: target (a class), top_k, method, steps (model kinds ignore what they do not use)."""

    def explain(self, text: str, **options: Any) -> dict[str, Any]: ...


def can_explain(model: object) -> bool:
    """True when the model implements the optional explain()."""
    return callable(getattr(model, "explain", None))


def write_meta(folder: Path, kind: str, classes: Sequence[str], extra: dict[str, Any]) -> None:
    """Record how to load a saved model folder, its label set and its config."""
    meta = {"kind": kind, "classes": [str(c) for c in classes], **extra}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def read_meta(folder: Path) -> dict[str, Any]:
    """Read the metadata written by write_meta."""
    return json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))


EMPTY_TEXT = "empty_text"  # the reason every client gives for a text no model can answer


def empty_text(text: object, clean: dict[str, Any]) -> bool:
    """The one rule for a valid text: it is not empty after the model's own normalisation
    (`clean`, as it was trained with; training drops such texts). The pyfunc refuses these,
    the API answers 422 and `textloop predict` gives no prediction (reason empty_text)."""
    return not normalize_text(text, **clean)


def proba_frame(classes: Sequence[str], proba: np.ndarray) -> pd.DataFrame:
    """Predictions as label, confidence and one proba_<class> column per class."""
    proba = np.asarray(proba, dtype=float)
    idx = proba.argmax(axis=1) if len(proba) else np.array([], dtype=int)
    out = pd.DataFrame({"label": [str(classes[i]) for i in idx], "confidence": proba.max(axis=1)
                        if len(proba) else []})
    for j, cls in enumerate(classes):
        out[f"proba_{cls}"] = proba[:, j] if len(proba) else []
    return out


# Saved baseline models are joblib pickles, which name the module of every class they hold.
# When a module moves, its old dotted path stays here, mapped to the modules that now hold its
# names (tried in order), so every model saved before the move still loads. This table is the
# one place that knows old module paths; nothing re-exports names for pickles' sake.
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "tasks.train": ("tasks.train.baseline", "tasks.train.ngrams"),
    "tasks.ngrams": ("tasks.train.ngrams",),
    "tasks.redact": ("tasks.clean.redact",),
    "tasks.label_issues": ("tasks.label.label_issues",),
    "tasks.pseudo": ("tasks.label.pseudo",),
    "tasks.weak": ("tasks.label.weak",),
    "tasks.transformer": ("tasks.train.transformer.trainer",
                          "tasks.train.transformer.torch_classifier"),
    "tasks.transformer_core": ("tasks.train.transformer.torch_model",),
    "tasks.transformer_loop": ("tasks.train.transformer.fine_tune_loop",),
}


def moved_class(module: str, name: str) -> tuple[str, str]:
    """Where `module.name` (as an old pickle names it) lives now: (module, name)."""
    import importlib

    for target in MOVED_MODULES.get(module, ()):
        if hasattr(importlib.import_module(target), name.partition(".")[0]):
            return target, name
    return module, name


def load_pickled(path: Path) -> Any:
    """Load a joblib pickle (as joblib.dump wrote it, uncompressed), resolving module paths
    that moved since it was saved through MOVED_MODULES."""
    from joblib.numpy_pickle import NumpyUnpickler

    class _Unpickler(NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(*moved_class(module, name))

    with open(path, "rb") as handle:
        return _Unpickler(str(path), handle, ensure_native_byte_order=True).load()
