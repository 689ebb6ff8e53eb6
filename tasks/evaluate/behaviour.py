"""Behavioural tests (CheckList-style, Ribeiro et al. 2020) run on every candidate: minimum
functionality (mft: each text must get a label), invariance (inv: a perturbation - another name,
a typo, other punctuation - must not change the prediction) and directional (dir: appending a
clause must not raise / lower one class's probability). The suite is a YAML file in the project
(paths.behaviour_suite); results are pass rates per test and overall."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from textloop.core.errors import UserError
from textloop.core.model import TextClassifier

log = logging.getLogger(__name__)

MAX_FAILURES = 3  # failing examples kept per test in the report

# first names swapped by the `names` perturbation, each to the next one (cyclic)
NAMES = ["John", "Mary", "Ahmed", "Mei", "Carlos", "Olga", "Kwame", "Priya", "Lukas", "Aiko"]


class BehaviourTest(BaseModel):
    """One test of the suite (a YAML mapping)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    type: Literal["mft", "inv", "dir"]
    texts: list[str] = Field(min_length=1)
    label: str | None = None  # mft: the expected label; dir: the class whose probability is watched
    perturb: Literal["names", "typos", "punctuation"] | None = None  # inv
    append: str | None = None  # dir: the clause appended to each text
    expect: Literal["not_increase", "not_decrease"] = "not_increase"  # dir
    tolerance: float = Field(0.0, ge=0, le=1)  # dir: allowed probability move the wrong way


class BehaviourSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: dict[str, list[str]] = {}  # suite label -> class names it may have in a model
    tests: list[BehaviourTest] = Field(min_length=1)


def load_suite(path: Path) -> BehaviourSuite:
    """Read and check a suite file. Raises UserError naming the file and the problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        suite = BehaviourSuite.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the behavioural suite: {exc}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{path}: {where}: {err['msg']}") from exc
    for t in suite.tests:
        need = {"mft": ("label",), "inv": ("perturb",), "dir": ("label", "append")}[t.type]
        missing = [f for f in need if getattr(t, f) is None]
        if missing:
            raise UserError(f"{path}: test {t.name!r} ({t.type}) needs {', '.join(missing)}")
    return suite


def resolve_label(name: str, aliases: dict[str, list[str]], classes: Sequence[str]) -> str | None:
    """The model's class for a suite label: the label itself, else its first alias the model
    has (None: the model has no such class and the test is skipped)."""
    for candidate in [name, *aliases.get(name, [])]:
        if str(candidate) in classes:
            return str(candidate)
    return None


def perturb(text: str, kind: str) -> str:
    """A deterministic perturbation: `names` swaps each known first name for the next one;
    `typos` swaps two middle letters of the longest word; `punctuation` removes trailing
    punctuation, or adds a '!' when there is none."""
    if kind == "names":
        pattern = r"\b(" + "|".join(NAMES) + r")\b"
        return re.sub(pattern, lambda m: NAMES[(NAMES.index(m[1]) + 1) % len(NAMES)], text)
    if kind == "typos":
        words = re.findall(r"[A-Za-z]{4,}", text)
        if not words:
            return text
        w = max(words, key=len)
        i = len(w) // 2
        return text.replace(w, w[:i - 1] + w[i] + w[i - 1] + w[i + 1:], 1)
    stripped = text.rstrip(".!?;, ")
    return stripped if stripped != text.rstrip() else text.rstrip() + "!"


def _check(t: BehaviourTest, cls: str | None, proba: Callable[[list[str]], np.ndarray],
           classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Pass flag per text of one test and the texts (or text pairs) that failed."""
    base = proba(t.texts)
    if t.type == "mft":
        ok = np.array([classes[i] == cls for i in base.argmax(axis=1)])
        return ok, [x for x, good in zip(t.texts, ok, strict=True) if not good]
    other = ([perturb(x, t.perturb or "") for x in t.texts] if t.type == "inv"
             else [x.rstrip() + t.append for x in t.texts])
    moved = proba(other)
    if t.type == "inv":
        ok = base.argmax(axis=1) == moved.argmax(axis=1)
    else:
        j = classes.index(cls)
        rise = moved[:, j] - base[:, j]
        ok = rise <= t.tolerance if t.expect == "not_increase" else -rise <= t.tolerance
    return ok, [f"{a!r} -> {b!r}" for a, b, good in zip(t.texts, other, ok, strict=True)
                if not good]


def run_suite(suite: BehaviourSuite, model: TextClassifier) -> dict[str, Any]:
    """Run every test on a model. Returns {pass_rate (passed cases / cases run, None when none
    ran), cases, passed, tests: {name: {type, cases, passed, pass_rate, failures | skipped}}}."""
    classes = [str(c) for c in model.classes_]
    tests: dict[str, Any] = {}
    for t in suite.tests:
        cls = resolve_label(t.label, suite.labels, classes) if t.label else None
        if t.label and cls is None:
            tests[t.name] = {"type": t.type, "skipped": f"the model has no class for {t.label!r}"}
            continue
        ok, failures = _check(t, cls, lambda xs: model.predict_proba(list(xs)), classes)
        tests[t.name] = {"type": t.type, "cases": len(ok), "passed": int(ok.sum()),
                         "pass_rate": float(ok.mean()), "failures": failures[:MAX_FAILURES]}
    ran = [r for r in tests.values() if "cases" in r]
    cases, passed = sum(r["cases"] for r in ran), sum(r["passed"] for r in ran)
    return {"pass_rate": passed / cases if cases else None, "cases": cases, "passed": passed,
            "tests": tests}
