"""clean's plan (CLEAN_PLAN, textloop.core.frame_plan): normalise each partition (scan), decide
duplicates, conflicts and feedback overrides once over compact keys of every row (a 128-bit key
of the normalised text instead of the text: textloop.core.text.text_keys) with clean's own
functions, then split each partition by those decisions (apply). One frame is one partition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.frame_plan import FramePlan, Step
from textloop.core.text import text_keys

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
    from tasks.clean import _apply_feedback_overrides, _collapse_duplicates, _quarantine_conflicts

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
    the quarantined ones per decision (clean.quarantine_rows, reason = the decision's name
    before '/')."""
    from tasks.clean import quarantine_rows

    out, gone = {}, np.zeros(len(df), dtype=bool)
    pos = df.index.to_numpy()
    for name, positions in removed.items():
        hit = np.isin(pos, positions)
        gone |= hit
        out[name] = quarantine_rows(df[hit], name.split("/")[0], "clean")
    return df[~gone], out


def scan(df: pd.DataFrame, cfg: Any) -> Step:
    """The row-local step (tasks.clean.normalize_rows): the rows that stay, the empty/short
    quarantine parts, and as facts the kept rows' compact keys, the redaction counts and the
    rows read."""
    from tasks.clean import normalize_rows

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
    from tasks.clean import _report
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
