"""clean: normalize text, collapse duplicates, quarantine what cannot be trained on."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from tasks.clean.redact import redact_texts
from textloop.core.config import CleanConfig
from textloop.core.frame_plan import run_frame
from textloop.core.text import normalize_text

log = logging.getLogger(__name__)

def quarantine_rows(df: pd.DataFrame, reason: str, stage: str) -> pd.DataFrame:
    """Tag removed rows with why and where, so nothing is dropped silently."""
    out = df.copy()
    out["reason"] = reason
    out["stage"] = stage
    return out


def clean_frame(
    raw: pd.DataFrame, strip_html: bool = True, lowercase: bool = False, min_chars: int = 1,
    redact: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Normalize (the one rule, textloop.core.text), redact the `redact` kinds (the one rule,
    tasks/clean/redact.py: placeholders such as <EMAIL>), then split rows into kept and quarantined;
    report counts that add up, and replacements per kind. Texts empty after normalisation (only
    invisible characters) are `empty_text`; duplicate and conflict keys are the redacted texts.
    CLEAN_PLAN on one frame (the executor runs the same plan over partitions)."""
    from tasks.clean.clean_parts import CLEAN_PLAN

    cfg = CleanConfig(strip_html=strip_html, lowercase=lowercase, min_chars=min_chars,
                      redact=list(redact))
    out, report = run_frame(CLEAN_PLAN, raw, cfg)
    return out["kept"], out["quarantine"], report


def normalize_rows(raw: pd.DataFrame, strip_html: bool = True, lowercase: bool = False,
                   min_chars: int = 1, redact: Sequence[str] = ()
                   ) -> tuple[pd.DataFrame, list[pd.DataFrame], dict]:
    """clean's per-row part: the rows normalised and redacted that stay (same index), the rows
    that are `empty_text` and `too_short` as quarantine frames, and the redaction counts. Row-local
    (CLEAN_PLAN's scan step)."""
    df = raw.copy()
    texts = [normalize_text(t, strip_html, lowercase) for t in df["text"]]
    texts, redaction = redact_texts(texts, redact)
    df["text"] = pd.Series(texts, index=df.index, dtype=object)
    length = df["text"].map(len)  # works on zero rows too (no .str accessor)
    empty, short = length == 0, (length > 0) & (length < min_chars)
    parts = [quarantine_rows(df[empty], "empty_text", "clean"),
             quarantine_rows(df[short], "too_short", "clean")]
    return df[~(empty | short)], parts, redaction


def _key(df: pd.DataFrame) -> pd.Series:
    """Duplicates are judged within a role (data vs explicit test set) on normalized text."""
    return df["role"].astype(str) + "\x00" + df["text"]


def _apply_feedback_overrides(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A human correction (feedback/returned label) supersedes other labels of the same text."""
    fb = df[(df["source"] == "feedback") & df["label"].notna()]
    if fb.empty:
        return df, quarantine_rows(df.iloc[:0], "", "clean")
    latest = fb.assign(_k=_key(fb)).drop_duplicates("_k", keep="last")
    winner_label = dict(zip(latest["_k"], latest["label"]))
    winner_id = set(latest["row_id"])
    keys = _key(df)
    overridden = keys.isin(winner_label.keys()) & ~df["row_id"].isin(winner_id)
    loser = df[overridden]
    return df[~overridden], quarantine_rows(loser, "superseded_by_feedback", "clean")


def _quarantine_conflicts(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Same normalized text with different labels cannot be trusted: quarantine every copy."""
    labeled = df[df["label"].notna()]
    n_labels = labeled.groupby(_key(labeled))["label"].nunique()
    bad_keys = set(n_labels[n_labels > 1].index)
    is_bad = _key(df).isin(bad_keys)
    return df[~is_bad], quarantine_rows(df[is_bad], "conflicting_labels", "clean")


def _collapse_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the first copy of each normalized text (a labeled copy before an unlabeled one)."""
    order = df.assign(_unlabeled=df["label"].isna()).sort_values("_unlabeled", kind="stable")
    dup = _key(order).duplicated(keep="first")
    kept = order[~dup].drop(columns="_unlabeled").sort_index()
    removed = order[dup].drop(columns="_unlabeled")
    return kept, quarantine_rows(removed, "duplicate_text", "clean")


def _report(n_in: int, kept: pd.DataFrame, quarantined: pd.DataFrame) -> dict:
    """Counts per reason; rows_in == rows_out + rows_quarantined is asserted, not hoped."""
    by_reason = quarantined["reason"].value_counts().to_dict() if len(quarantined) else {}
    report = {"rows_in": n_in, "rows_out": len(kept), "rows_quarantined": len(quarantined),
              "quarantined_by_reason": {str(k): int(v) for k, v in by_reason.items()}}
    if report["rows_out"] + report["rows_quarantined"] != n_in:
        raise AssertionError(f"clean lost rows: {report}")
    return report
