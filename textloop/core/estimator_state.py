"""A fitted scikit-learn estimator as what it is, not as where its code lives: a JSON description
(a stable type name per estimator, its constructor parameters and fitted attributes) beside one
.npz of its arrays, read back without pickle (`np.load(allow_pickle=False)`). Only the types the
caller names can be built, so a saved model cannot run code; moving a class to another module
changes nothing in the files, only the name -> class table the caller passes."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 2  # the saved-model format this code writes; 1 was a joblib pickle (model.joblib)
DESCRIPTION_FILE = "model.json"
ARRAYS_FILE = "model.npz"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same model gives the same bytes


class UnsavableState(TypeError):
    """An estimator holds a value the format has no safe representation for."""


def sklearn_types() -> dict[str, type]:
    """The scikit-learn building blocks a saved text model may hold, by stable name."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    return {"pipeline": Pipeline, "feature_union": FeatureUnion,
            "count_vectorizer": CountVectorizer, "tfidf_transformer": TfidfTransformer,
            "tfidf_vectorizer": TfidfVectorizer, "logistic_regression": LogisticRegression}


class _Encoder:
    """Turns an estimator tree into JSON-able values, collecting its arrays by key."""

    def __init__(self, types: Mapping[str, type]):
        self.names = {cls: name for name, cls in types.items()}
        self.arrays: dict[str, np.ndarray] = {}

    def _array(self, value: np.ndarray) -> str:
        """Keep an array for the npz file; its key in the JSON description."""
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.ascontiguousarray(value)
        return key

    def estimator(self, est: Any, where: str) -> dict[str, Any]:
        """{type, params, state}: constructor parameters and every other instance attribute
        (minus those the class lists in `_unsaved_attrs`, e.g. caches)."""
        name = self.names.get(type(est))
        if name is None:
            raise UnsavableState(f"{where}: {type(est).__qualname__} has no saved-format name")
        params = est.get_params(deep=False)
        skip = set(params) | set(getattr(est, "_unsaved_attrs", ()))
        state = {k: v for k, v in vars(est).items() if k not in skip}
        return {"type": name,
                "params": {k: self.value(v, f"{where}.{k}") for k, v in params.items()},
                "state": {k: self.value(v, f"{where}.{k}") for k, v in state.items()}}

    def value(self, value: Any, where: str) -> Any:
        """A JSON value: scalars as they are, everything else tagged with what it is."""
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, np.generic):
            return {"$scalar": value.item(), "dtype": value.dtype.str}
        if isinstance(value, type | np.dtype):
            return {"$dtype": np.dtype(value).str}
        if isinstance(value, np.ndarray):
            return self._ndarray(value, where)
        if isinstance(value, list | tuple):
            items = [self.value(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return {"$tuple" if isinstance(value, tuple) else "$list": items}
        if isinstance(value, dict):
            return self._dict(value, where)
        if type(value) in self.names:
            return {"$estimator": self.estimator(value, where)}
        raise UnsavableState(f"{where}: cannot save a {type(value).__qualname__}")

    def _ndarray(self, value: np.ndarray, where: str) -> dict[str, Any]:
        """A numeric array by reference into the npz file, an array of strings inline; any other
        object array cannot be saved without pickle."""
        if value.dtype != object:
            return {"$array": self._array(value)}
        if all(isinstance(v, str) for v in value.ravel()):
            return {"$strings": value.tolist()}
        raise UnsavableState(f"{where}: an object array holding non-strings")

    def _dict(self, value: dict, where: str) -> dict[str, Any]:
        """A dict with string keys: a vocabulary (values 0..n-1) packed as arrays, anything else
        value by value."""
        if not all(isinstance(k, str) for k in value):
            raise UnsavableState(f"{where}: a dict with non-string keys")
        if value and all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                         for v in value.values()):
            columns = np.fromiter(value.values(), dtype=np.int64, count=len(value))
            if np.array_equal(np.sort(columns), np.arange(len(value))):
                return self._vocabulary(value, columns)
        return {"$dict": {k: self.value(v, f"{where}.{k}") for k, v in value.items()}}

    def _vocabulary(self, vocab: dict[str, int], columns: np.ndarray) -> dict[str, Any]:
        """term -> column as the terms in column order, joined into one UTF-8 buffer with their
        lengths: a few hundred thousand n-grams load in a fraction of a second."""
        terms = np.array(list(vocab), dtype=object)[np.argsort(columns)].tolist()
        joined = "".join(terms).encode("utf-8", "surrogatepass")
        lengths = np.fromiter(map(len, terms), dtype=np.int64, count=len(terms))
        return {"$vocabulary": [self._array(np.frombuffer(joined, dtype=np.uint8)),
                                self._array(lengths)]}


class _Decoder:
    """Builds the estimator tree back from the description and the arrays."""

    def __init__(self, types: Mapping[str, type], arrays: Mapping[str, np.ndarray]):
        self.types = types
        self.arrays = arrays

    def estimator(self, spec: dict[str, Any]) -> Any:
        """Rebuild an estimator of a known type from its parameters and fitted attributes; an
        unknown type is refused, never imported by name."""
        cls = self.types.get(spec["type"])
        if cls is None:
            raise ValueError(f"unknown estimator type {spec['type']!r} "
                             f"(known: {', '.join(sorted(self.types))})")
        est = cls(**{k: self.value(v) for k, v in spec["params"].items()})
        for key, value in spec["state"].items():
            setattr(est, key, self.value(value))
        return est

    def value(self, value: Any) -> Any:
        """One JSON value back as Python: the tagged forms the encoder writes ($array, $strings,
        $scalar, ...) decoded, plain values as they are."""
        if not isinstance(value, dict):
            return value
        tag = next(iter(value))
        body = value[tag]
        if tag == "$array":
            return self.arrays[body]
        if tag == "$strings":
            return np.array(body, dtype=object)
        if tag == "$scalar":
            return np.dtype(value["dtype"]).type(body)
        if tag == "$dtype":
            return np.dtype(body).type
        if tag in ("$list", "$tuple"):
            items = [self.value(v) for v in body]
            return items if tag == "$list" else tuple(items)
        if tag == "$dict":
            return {k: self.value(v) for k, v in body.items()}
        if tag == "$vocabulary":
            return self._vocabulary(*body)
        if tag == "$estimator":
            return self.estimator(body)
        raise ValueError(f"unknown value tag {tag!r}")

    def _vocabulary(self, joined_key: str, lengths_key: str) -> dict[str, int]:
        """A vocabulary packed by the encoder (one joined string and the term lengths) back as
        {term: column}."""
        joined = self.arrays[joined_key].tobytes().decode("utf-8", "surrogatepass")
        ends = np.cumsum(self.arrays[lengths_key]).tolist()
        starts = [0, *ends[:-1]]
        return {joined[a:b]: i for i, (a, b) in enumerate(zip(starts, ends))}


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez without pickle and with fixed timestamps: equal arrays, equal bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{key}.npy", _ZIP_DATE), "w",
                              force_zip64=True) as handle:
                np.lib.format.write_array(handle, array, allow_pickle=False)


def save_estimator(est: Any, folder: Path, types: Mapping[str, type]) -> None:
    """Write `est` into folder as DESCRIPTION_FILE + ARRAYS_FILE. Raises UnsavableState naming
    the attribute when part of it has no safe representation (nothing is pickled instead)."""
    import sklearn

    encoder = _Encoder(types)
    description = {"format": FORMAT, "sklearn": sklearn.__version__,
                   "estimator": encoder.estimator(est, type(est).__qualname__)}
    write_npz(Path(folder) / ARRAYS_FILE, encoder.arrays)
    (Path(folder) / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1) + "\n",
                                                 encoding="utf-8")


def load_estimator(folder: Path, types: Mapping[str, type]) -> Any:
    """The estimator save_estimator wrote, built only from `types`; no pickle is read.
    Raises ValueError for a format this code does not know."""
    description = json.loads((Path(folder) / DESCRIPTION_FILE).read_text(encoding="utf-8"))
    if description.get("format") != FORMAT:
        raise ValueError(f"{folder}: saved-model format {description.get('format')!r}, "
                         f"this textloop reads format {FORMAT}")
    with np.load(Path(folder) / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return _Decoder(types, arrays).estimator(description["estimator"])
