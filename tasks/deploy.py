"""deploy: the promotion rule, pure. The candidate's health (no do-nothing model), the test rows
neither model trained on, the score comparison; one GateDecision from which every reason, tag
and summary line is written. MLflow I/O lives in textloop/pipeline/registry.py."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.evaluate.metrics import score
from textloop.core.config import DeployConfig
from textloop.core.model import CHAMPION_ALIAS
from textloop.core.text import normalize_text

ALIAS = CHAMPION_ALIAS  # where the gate puts a candidate that passes
MAX_NAMED = 10  # classes named in one reason; the rest are counted

Outcome = Literal["promoted", "refused", "unchanged", "pending"]  # pending: passed, awaits a person


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
    # the paired evidence: candidate - champion on the same n_compared rows
    rule: str = "non_inferior"
    diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    p_value: float | None = None  # McNemar's exact test
    candidate_only_correct: int | None = None  # discordant rows McNemar counts
    champion_only_correct: int | None = None
    bootstrap_samples: int = 0
    note: str = ""  # "test set too small to show a difference of X" when the CI straddles the rule
    slice_diffs: list[dict[str, Any]] = field(default_factory=list)
    behaviour_pass_rate: float | None = None

    @property
    def threshold(self) -> float:
        """The bound the difference's CI lower end must reach: -max_regression or 0."""
        return 0.0 if self.rule == "superior" else -self.max_regression
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
        if self.outcome == "pending":
            return f"pending approval (deploy.approval: manual), passed the gate: {scores}"
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
        if self.diff_ci_low is not None:
            return self._paired_text(cand, champ)
        tail = f"; more than max_regression {self.max_regression} below" if worse else ""
        return (f"candidate {self.metric} {cand:.4f} is {relation} champion version "
                f"{self.champion_version} {champ:.4f} on {self.n_compared} test rows neither "
                f"model trained on ({self.n_excluded} excluded){tail}")

    def _paired_text(self, cand: float, champ: float) -> str:
        """The score half of the reason under the paired rule: the difference, its CI, McNemar's
        p-value and whether the CI's lower end reached the rule's bound."""
        low, high, diff = self.diff_ci_low, self.diff_ci_high, self.diff or 0.0
        relation = "better than" if cand > champ else "equal to" if cand == champ else "below"
        ok = low is not None and low >= self.threshold if self.rule == "non_inferior" else (
            low is not None and low > self.threshold)
        sign = (">=" if ok else "<") if self.rule == "non_inferior" else (">" if ok else "<=")
        text = (f"candidate {self.metric} {cand:.4f} is {relation} champion version "
                f"{self.champion_version} {champ:.4f} on {self.n_compared} test rows neither "
                f"model trained on ({self.n_excluded} excluded); paired difference {diff:+.4f}, "
                f"95% CI [{low:+.4f}, {high:+.4f}], McNemar p={self.p_value:.3g}; rule "
                f"{self.rule}: CI lower bound {low:+.4f} {sign} {self.threshold:+.4f}")
        return f"{text}; {self.note}" if self.note else text

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


def awaiting_approval(decision: GateDecision, cfg: DeployConfig) -> GateDecision:
    """The approval rule: under `deploy.approval: manual` a candidate the gate would promote
    waits as `pending` (never served) until a person approves it; anything else is unchanged."""
    if decision.promote and cfg.approval == "manual":
        decision.outcome = "pending"
    return decision





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
         metric: str, why: str = "label sets differ",
         paired: dict[str, Any] | None = None) -> GateDecision:
    """The score rule: against min_score without a (comparable) champion; else, with `paired`
    evidence (tasks.evaluate.stats: diff, low, high, p_value, a_only, b_only, samples), on the CI of the
    difference: non_inferior promotes when its lower bound >= -max_regression, superior when it
    is > 0. Without paired evidence: the candidate may be at most max_regression below."""
    base = {"metric": metric, "candidate_score": candidate, "min_score": cfg.min_score,
            "max_regression": cfg.max_regression, "rule": cfg.rule}
    if champion is None or not comparable:
        ok = candidate >= cfg.min_score
        return GateDecision("promoted" if ok else "refused", comparable=comparable,
                            not_comparable_why="" if comparable else why,
                            champion_version=None if comparable else "?", **base)
    if paired is None:
        ok = candidate >= champion - cfg.max_regression
        return GateDecision("promoted" if ok else "refused", champion_score=champion, **base)
    d = GateDecision("refused", champion_score=champion, diff=paired["diff"],
                     diff_ci_low=paired["low"], diff_ci_high=paired["high"],
                     p_value=paired["p_value"], candidate_only_correct=paired["a_only"],
                     champion_only_correct=paired["b_only"],
                     bootstrap_samples=paired["samples"], **base)
    low = paired["low"]
    ok = low >= d.threshold if cfg.rule == "non_inferior" else low > d.threshold
    d.outcome = "promoted" if ok else "refused"
    if not ok and paired["high"] > d.threshold:
        d.note = too_small_note(paired, d.threshold, paired.get("n", 0))
    return d


def too_small_note(paired: dict[str, Any], threshold: float, n: int) -> str:
    """Why an inconclusive test set refuses: its 95% CI is wider than the gap between the
    observed difference and the rule's bound; with the usual 1/sqrt(n) scaling, about how many
    rows would settle it."""
    half = (paired["high"] - paired["low"]) / 2
    gap = abs(paired["diff"] - threshold)
    need = f"; about {int(np.ceil(n * (half / gap) ** 2)):,} rows would" if gap > 0 and n else ""
    return (f"test set too small to show a difference of {gap:.4f} ({n} rows: 95% CI "
            f"half-width {half:.4f}{need})")


@dataclass(frozen=True)
class Evidence:
    """What the gate needs beyond the predictions: the bootstrap size and seed
    (evaluate.bootstrap_samples / bootstrap_seed), the candidate test rows' slice values
    (tasks.evaluate.slices.slice_keys, aligned with y_true) with the smallest slice that gates
    (evaluate.slices.min_rows), and the candidate's behavioural pass rate (None: not run)."""

    samples: int = 1000
    seed: int = 0
    slices: dict[str, np.ndarray] | None = None
    slice_min_rows: int = 30
    behaviour_pass_rate: float | None = None


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
           champion: ChampionView | None, cfg: DeployConfig, metric: str,
           evidence: Evidence | None = None) -> GateDecision:
    """The whole gate: health of the candidate on its test split, then the score rule on the
    rows neither model trained on (paired CI + McNemar when `evidence` is given), then the
    optional slice and behaviour conditions. y_true/y_pred: the candidate's test split, aligned.

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
            theirs = [str(p) for p in champion.predicted]
            paired = None if evidence is None else paired_evidence(truth, mine, theirs, metric,
                                                                   evidence)
            decision = gate(score(truth, mine)[metric], score(truth, theirs)[metric],
                            True, cfg, metric, paired=paired)
            if evidence is not None and evidence.slices:
                kept = {k: np.asarray(v)[keep] for k, v in evidence.slices.items()}
                decision.slice_diffs = slice_diffs(truth, mine, theirs, kept, metric,
                                                   evidence.slice_min_rows)
                problems += slice_problems(decision.slice_diffs, cfg.max_slice_regression,
                                           metric)
        decision.champion_version = champion.version
        decision.n_compared, decision.n_excluded = (n_keep, n_out) if not why else (0, n_out)
    if evidence is not None:
        decision.behaviour_pass_rate = evidence.behaviour_pass_rate
        problems += behaviour_problems(evidence.behaviour_pass_rate, cfg.min_behaviour_pass_rate)
    decision.n_test, decision.problems = len(y_true), problems
    if problems:
        decision.outcome = "refused"
    return decision


def paired_evidence(truth: list[str], mine: list[str], theirs: list[str], metric: str,
                    evidence: Evidence) -> dict[str, Any]:
    """Paired bootstrap CI of candidate - champion and McNemar's test on the same rows."""
    from tasks.evaluate.stats import mcnemar, paired_bootstrap

    ci = paired_bootstrap(truth, mine, theirs, metric, evidence.samples, evidence.seed)
    return {**ci, **mcnemar(truth, mine, theirs), "samples": evidence.samples, "n": len(truth)}


def slice_diffs(truth: list[str], mine: list[str], theirs: list[str],
                keys: dict[str, np.ndarray], metric: str, min_rows: int) -> list[dict[str, Any]]:
    """Per slice value with at least min_rows rows (smaller ones are neither stored nor shown,
    as in evaluate): rows, candidate and champion metric, their difference; each one gates."""
    from tasks.evaluate.stats import encode, point_metrics

    (t, a, b), k = encode(truth, mine, theirs)
    rows: list[dict[str, Any]] = []
    for dim, values in keys.items():
        for value in sorted(set(values.tolist())):
            m = values == value
            if int(m.sum()) < min_rows:
                continue
            cand = point_metrics(t[m], a[m], k)[metric]
            champ = point_metrics(t[m], b[m], k)[metric]
            rows.append({"slice": f"{dim}={value}", "rows": int(m.sum()), "candidate": cand,
                         "champion": champ, "diff": cand - champ, "gated": True})
    return rows


def slice_problems(diffs: list[dict[str, Any]], max_drop: float | None, metric: str) -> list[str]:
    """Refusals: a gated slice (enough rows) where the candidate is more than max_drop below the
    champion (deploy.max_slice_regression; None: no slice condition)."""
    if max_drop is None:
        return []
    bad = [d for d in diffs if d["gated"] and d["diff"] < -max_drop]
    out = [f"slice {d['slice']} ({d['rows']} rows): {metric} {d['candidate']:.4f} is "
           f"{-d['diff']:.4f} below the champion's {d['champion']:.4f} (> max_slice_regression "
           f"{max_drop})" for d in bad[:MAX_NAMED]]
    if len(bad) > MAX_NAMED:
        out.append(f"{len(bad) - MAX_NAMED} more slices regressed")
    return out


def behaviour_problems(pass_rate: float | None, minimum: float | None) -> list[str]:
    """Refusal when the behavioural suite's pass rate is below deploy.min_behaviour_pass_rate
    (None: no condition), or unknown while a minimum is set."""
    if minimum is None:
        return []
    if pass_rate is None:
        return [f"no behavioural test ran (deploy.min_behaviour_pass_rate {minimum} is set)"]
    if pass_rate < minimum:
        return [f"behavioural pass rate {pass_rate:.3f} < min_behaviour_pass_rate {minimum}"]
    return []


def unchanged(candidate_version: str, champion_version: str | None, metric: str) -> GateDecision:
    """The model folder is already registered: nothing is registered or gated this run."""
    return GateDecision("unchanged", metric, candidate_version=candidate_version,
                        champion_version=champion_version)
