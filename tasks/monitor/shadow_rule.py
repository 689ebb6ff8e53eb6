"""shadow: compare the challenger with the champion on the same live requests, and decide.

Pure functions over one paired frame (one row per request both models scored): columns
champion_label, champion_confidence, challenger_label, challenger_confidence, true_label (None
where no feedback came). textloop/loop/shadow_decisions.py reads the frame and acts on the decision.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from scipy.stats import binomtest

from textloop.core.config import ShadowConfig


@dataclass
class ShadowComparison:
    """Agreement, paired live accuracy (with McNemar's exact test) and confidence shift."""

    n_paired: int
    agreement: float | None
    n_feedback: int
    champion_accuracy: float | None
    challenger_accuracy: float | None
    only_champion_right: int      # McNemar b
    only_challenger_right: int    # McNemar c
    mcnemar_p: float | None       # exact two-sided binomial test of c against b + c
    confidence_shift: float | None  # mean challenger confidence - mean champion confidence
    shared_classes: list[str] | None = None  # accuracy compared on these labels only
    n_feedback_excluded: int = 0  # feedback labels outside shared_classes, left out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: pd.Series) -> float | None:
    return float(values.mean()) if len(values) else None


def shared_classes(champion: Collection[str], challenger: Collection[str]
                   ) -> list[str] | None:
    """The classes both versions know when their label sets differ (None: the same set, or
    one of them unknown): what a live comparison is restricted to."""
    if not champion or not challenger or set(champion) == set(challenger):
        return None
    return sorted(set(champion) & set(challenger))


def compare(paired: pd.DataFrame, shared: Collection[str] | None = None) -> ShadowComparison:
    """The comparison of one paired window (see the module docstring for its columns).

    `shared`: the classes both versions know. Live accuracy is then compared only on feedback
    labelled with one of them (a class only one version knows would count against the other
    on every such row), and the comparison says which classes and how many rows it left out."""
    agree = paired["champion_label"].astype(str) == paired["challenger_label"].astype(str)
    fb = paired[paired["true_label"].notna()]
    excluded = 0
    if shared is not None:
        inside = fb["true_label"].astype(str).isin({str(c) for c in shared})
        fb, excluded = fb[inside], int((~inside).sum())
    truth = fb["true_label"].astype(str)
    champ_ok = fb["champion_label"].astype(str) == truth
    chal_ok = fb["challenger_label"].astype(str) == truth
    b, c = int((champ_ok & ~chal_ok).sum()), int((~champ_ok & chal_ok).sum())
    p = binomtest(c, b + c, 0.5).pvalue if b + c else None
    shift = (float(paired["challenger_confidence"].mean() - paired["champion_confidence"].mean())
             if len(paired) else None)
    return ShadowComparison(
        n_paired=len(paired), agreement=_mean(agree.astype(float)), n_feedback=len(fb),
        champion_accuracy=_mean(champ_ok.astype(float)),
        challenger_accuracy=_mean(chal_ok.astype(float)), only_champion_right=b,
        only_challenger_right=c, mcnemar_p=None if p is None else float(p),
        confidence_shift=shift,
        shared_classes=None if shared is None else sorted(str(c) for c in shared),
        n_feedback_excluded=excluded)


def decide(cmp: ShadowComparison, cfg: ShadowConfig) -> tuple[str, str]:
    """("wait" | "promote" | "retire", reason). Waits until shadow.min_requests paired
    predictions and shadow.min_feedback of them with feedback; then promotes when the
    challenger's live accuracy is at least the champion's minus shadow.max_accuracy_drop and it
    is not significantly worse (McNemar p < shadow.alpha with more champion-only wins); else
    retires it."""
    if cmp.n_paired < cfg.min_requests or cmp.n_feedback < cfg.min_feedback:
        return "wait", (f"{cmp.n_paired}/{cfg.min_requests} paired predictions, "
                        f"{cmp.n_feedback}/{cfg.min_feedback} with feedback")
    chal, champ = cmp.challenger_accuracy or 0.0, cmp.champion_accuracy or 0.0
    p = cmp.mcnemar_p if cmp.mcnemar_p is not None else 1.0
    worse = p < cfg.alpha and cmp.only_champion_right > cmp.only_challenger_right
    numbers = (f"live accuracy challenger {chal:.4f} vs champion {champ:.4f} on "
               f"{cmp.n_feedback} paired predictions with feedback (McNemar b={cmp.only_champion_right}, "
               f"c={cmp.only_challenger_right}, p={p:.3g}); agreement "
               f"{_pct(cmp.agreement)} of {cmp.n_paired}{_scope(cmp)}")
    if chal >= champ - cfg.max_accuracy_drop and not worse:
        return "promote", f"challenger at least as good: {numbers}"
    why = "significantly worse" if worse else f"more than {cfg.max_accuracy_drop} below"
    return "retire", f"challenger {why}: {numbers}"


def _scope(cmp: ShadowComparison) -> str:
    """What the accuracies were measured on, when restricted to the classes both know."""
    if cmp.shared_classes is None:
        return ""
    return (f"; compared on the classes both know ({', '.join(cmp.shared_classes)}): "
            f"{cmp.n_feedback_excluded} feedback rows for other classes left out")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"
