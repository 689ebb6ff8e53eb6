"""clean's plan (CLEAN_PLAN, textloop.core.frame_plan): normalise each partition (scan), decide
duplicates, conflicts and feedback overrides once over compact keys of every row (a 128-bit key
of the normalised text instead of the text: textloop.core.text.text_keys) with clean's own
functions, then split each partition by those decisions (apply). One frame is one partition."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasks.clean.redact import redact_texts
from textloop.core.config import CleanConfig
from textloop.core.frame_plan import FramePlan, Step, run_frame
from textloop.core.quarantine import quarantine_rows
from textloop.core.text import normalize_text, text_keys

log = logging.getLogger(__name__)

# the order of the quarantine file's parts (the in-memory order of clean's rules)
QUARANTINE_ORDER = ("empty_text", "too_short", "superseded_by_feedback", "conflicting_labels",
                    "duplicate_text/labeled", "duplicate_text/unlabeled")


def compact_rows(df: pd.DataFrame) -> pd.DataFrame:
    """What the global clean rules read of each row: position (as row_id: ids are unique),
    role, source, label, and the text's key."""
    return pd.DataFrame({"row_id": df.index.to_numpy(dtype=np.int64),
                         "role": df["role"].astype(object).to_numpy(),
                         "source": df["source"].astype(object).to_numpy(),
                         "label": df["label"].astype(object).to_numpy(),
                         "text": np.array(text_keys(df["text"].tolist()), dtype=object)})


def clean_decisions(compact: pd.DataFrame) -> tuple[dict[str, np.ndarray], int]:
    """clean.py's global rules on the compact rows of every partition (after the per-row
    empty/short step): the positions each rule quarantines, in the order the in-memory path
    lists them (superseded, conflicts, duplicates: labeled copies first), and how many test rows
    repeat a text (kept: the test set is scored as given)."""
    compact = compact.set_index(pd.RangeIndex(len(compact)))
    fixed = (compact["role"] == "test").to_numpy()
    data, test = compact[~fixed], compact[fixed]
    data, superseded = _apply_feedback_overrides(data)
    data, conflicts = _quarantine_conflicts(data)
    data, dups = _collapse_duplicates(data)
    labeled = dups["label"].notna().to_numpy()
    out = {"superseded_by_feedback": superseded["row_id"].to_numpy(dtype=np.int64),
           "conflicting_labels": conflicts["row_id"].to_numpy(dtype=np.int64),
           "duplicate_text/labeled": dups["row_id"].to_numpy(dtype=np.int64)[labeled],
           "duplicate_text/unlabeled": dups["row_id"].to_numpy(dtype=np.int64)[~labeled]}
    return out, int(test["text"].duplicated().sum())


def clean_rows(df: pd.DataFrame, removed: dict[str, np.ndarray]
               ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One normalised partition split by the global decisions: the kept rows (in order) and
    the quarantined ones per decision (quarantine_rows, reason = the decision's name
    before '/')."""
    out, gone = {}, np.zeros(len(df), dtype=bool)
    pos = df.index.to_numpy()
    for name, positions in removed.items():
        hit = np.isin(pos, positions)
        gone |= hit
        out[name] = quarantine_rows(df[hit], name.split("/")[0], "clean")
    return df[~gone], out


def scan(df: pd.DataFrame, cfg: Any) -> Step:
    """The row-local step (normalize_rows): the rows that stay, the empty/short
    quarantine parts, and as facts the kept rows' compact keys, the redaction counts and the
    rows read."""
    kept, (empty, short), redaction = normalize_rows(df, cfg.strip_html, cfg.lowercase,
                                                     cfg.min_chars, cfg.redact)
    return Step(parts={"empty_text": empty, "too_short": short}, carry=kept,
                facts={"keys": compact_rows(kept), "redaction": redaction, "rows": len(df)})


def decide(facts: Sequence[dict], cfg: Any, frames: Any) -> tuple[dict[str, np.ndarray], int]:
    """The global rules over every partition's keys (clean_decisions)."""
    return clean_decisions(pd.concat([f["keys"] for f in facts], ignore_index=True))


def apply(df: pd.DataFrame, cfg: Any, decision: tuple[dict[str, np.ndarray], int]) -> Step:
    """One partition split by the global decisions (clean_rows)."""
    kept, quarantined = clean_rows(df, decision[0])
    return Step(parts={"kept": kept, **quarantined})


def finish(scanned: Sequence[dict], applied: Sequence[Any], decision: tuple[Any, int],
           outputs: Mapping[str, pd.DataFrame], cfg: Any) -> dict:
    """clean's report: counts per reason that add up, test duplicates kept, redactions."""
    from textloop.core.frame_plan import merged_counts

    report = _report(sum(f["rows"] for f in scanned), outputs["kept"], outputs["quarantine"])
    report["test_duplicates_kept"] = decision[1]
    report["redaction"] = merged_counts([f["redaction"] for f in scanned])
    return report


CLEAN_PLAN = FramePlan(
    scan=scan, decide=decide, apply=apply,
    finish=finish,
    outputs={"kept": ("kept",), "quarantine": QUARANTINE_ORDER},
    compact={"kept": (), "quarantine": ("reason",)})


def clean_frame(
    raw: pd.DataFrame, strip_html: bool = True, lowercase: bool = False, min_chars: int = 1,
    redact: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Normalize (the one rule, textloop.core.text), redact the `redact` kinds (the one rule,
    tasks/clean/redact.py: placeholders such as <EMAIL>), then split rows into kept and quarantined;
    report counts that add up, and replacements per kind. Texts empty after normalisation (only
    invisible characters) are `empty_text`; duplicate and conflict keys are the redacted texts.
    CLEAN_PLAN on one frame (the executor runs the same plan over partitions)."""
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
