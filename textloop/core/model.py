"""The model contract: any classifier with `classes_` + `predict_proba(texts)`, saved as a folder,
served as one MLflow pyfunc that takes raw text (normalization inside)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from textloop.core.text import normalize_text

META_FILE = "textloop_model.json"
GLOBAL_FILE = "global_explanation.json"  # a linear model's top n-grams per class, in its folder
CHAMPION_ALIAS = "champion"  # the registry alias of the version a project serves


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


def load_estimator(folder: Path, types: Mapping[str, type]) -> Any:
    """The one loader of a saved scikit-learn model folder, by the format it was saved in:
    format 2 (textloop.core.estimator_state: a JSON description and arrays, no pickle), else
    format 1 (LEGACY_FILE, a joblib pickle from before), read by a restricted unpickler.
    `types`: stable name -> class of everything the model may hold (the caller's table).
    Raises ValueError for an unknown format, pickle.UnpicklingError for a pickle naming
    anything but a model type."""
    from textloop.core import estimator_state

    folder = Path(folder)
    if (folder / estimator_state.DESCRIPTION_FILE).exists():
        return estimator_state.load_estimator(folder, types)
    return _load_legacy(folder / LEGACY_FILE, types)


# --- format 1: joblib pickles, which name the module of every class they hold. A module's old
# dotted path maps to the modules that now hold its names (tried in order); only the legacy
# loader reads this table, and only to resolve classes it trusts.
LEGACY_FILE = "model.joblib"
_LEGACY_MODULES: dict[str, tuple[str, ...]] = {
    "tasks.train": ("tasks.train.baseline", "tasks.train.ngrams"),
    "tasks.ngrams": ("tasks.train.ngrams",),
}
_NUMPY_MODULES = ("numpy", "numpy._core.multiarray", "numpy.core.multiarray", "numpy.dtypes")
_NUMPY_FUNCTIONS = ("_reconstruct", "scalar")


def _legacy_class(module: str, name: str, types: Mapping[str, type]) -> Any:
    """The object an old pickle names as module.name, when it is one a model may hold: a class
    of `types` (also under its old module path), a numpy array/dtype/scalar type or array
    reconstructor, or joblib's array wrapper. Anything else raises UnpicklingError before its
    module is imported."""
    import importlib
    import pickle

    trusted = {(cls.__module__, cls.__qualname__): cls for cls in types.values()}
    for target in (module, *_LEGACY_MODULES.get(module, ())):
        if (target, name) in trusted:
            return trusted[target, name]
    if module == "joblib.numpy_pickle" and name == "NumpyArrayWrapper":
        from joblib.numpy_pickle import NumpyArrayWrapper

        return NumpyArrayWrapper
    if module in _NUMPY_MODULES and "." not in name:
        obj = getattr(importlib.import_module(module), name, None)
        if name in _NUMPY_FUNCTIONS or (isinstance(obj, type) and issubclass(
                obj, np.generic | np.dtype | np.ndarray)):
            return obj
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a saved model: "
                                 "not a type a model holds")


def _load_legacy(path: Path, types: Mapping[str, type]) -> Any:
    """A format-1 model (joblib.dump of the pipeline, uncompressed) through a restricted
    unpickler: only what _legacy_class trusts is ever imported or called."""
    from joblib.numpy_pickle import NumpyUnpickler

    class _Unpickler(NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            return _legacy_class(module, name, types)

    with open(path, "rb") as handle:
        return _Unpickler(str(path), handle, ensure_native_byte_order=True).load()
