"""optimize.space: the searched train.tfidf fields, checked against TfidfConfig before anything
runs, and one optuna trial's sample. Its own light module: `textloop run` checks the space before
the flow starts without importing the model code (scikit-learn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from textloop.core.config import TfidfConfig
from textloop.core.errors import UserError


@dataclass(frozen=True)
class Dim:
    """One searched TfidfConfig field: its optuna distribution."""

    name: str
    low: float
    high: float
    kind: str  # int | float | bool
    log: bool


def parse_space(space: dict[str, list[float]]) -> list[Dim]:
    """Validate optimize.space against TfidfConfig up front, so a typo fails before any fitting."""
    fields = TfidfConfig.model_fields
    dims = []
    for key, bounds in space.items():
        if key not in fields:
            raise UserError(f"optimize.space: unknown key {key!r}; searchable keys are the "
                            f"train.tfidf fields: {', '.join(sorted(fields))}")
        if len(bounds) != 2 or bounds[0] > bounds[1]:
            raise UserError(f"optimize.space.{key}: expected [low, high] with low <= high, "
                            f"got {list(bounds)}")
        dims.append(_dim(key, float(bounds[0]), float(bounds[1])))
    return dims


def _dim(key: str, low: float, high: float) -> Dim:
    """Type a range from the field's annotation and check both ends against its constraints."""
    annotation = str(TfidfConfig.model_fields[key].annotation)
    kind = "bool" if "bool" in annotation else "int" if "int" in annotation else "float"
    if kind == "int":
        low, high = float(int(low)), float(int(high))
    for end in (low, high):
        value = bool(end) if kind == "bool" else int(end) if kind == "int" else end
        try:
            TfidfConfig.model_validate({key: value} | _partner(key, value))
        except ValidationError as exc:
            raise UserError(f"optimize.space.{key}: {end:g} is out of range: "
                            f"{exc.errors()[0]['msg']}") from exc
    return Dim(key, low, high, kind, log=kind != "bool" and low > 0 and high >= 10 * low)


def _partner(key: str, value: Any) -> dict:
    """Keep the char n-gram range ordered while validating one end of it alone."""
    if key == "char_ngram_min":
        return {"char_ngram_max": max(value, TfidfConfig().char_ngram_max)}
    if key == "char_ngram_max":
        return {"char_ngram_min": min(value, TfidfConfig().char_ngram_min)}
    return {}


def suggest(trial: Any, dims: list[Dim], base: TfidfConfig) -> tuple[dict, TfidfConfig]:
    """Sample one configuration; a sampled char range that comes out reversed is narrowed."""
    values: dict[str, Any] = {}
    for d in dims:
        if d.kind == "bool":
            values[d.name] = trial.suggest_categorical(d.name, sorted({bool(d.low), bool(d.high)}))
        elif d.kind == "int":
            values[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
        else:
            values[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
    merged = base.model_dump() | values
    merged["char_ngram_min"] = min(merged["char_ngram_min"], merged["char_ngram_max"])
    if "char_ngram_min" in values:  # report what is actually fitted
        values["char_ngram_min"] = merged["char_ngram_min"]
    return values, TfidfConfig.model_validate(merged)
