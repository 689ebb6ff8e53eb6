"""label: keep rows with a trusted label; send the rest to a labeling queue. (How a label value
is spelled and matched, which ingest, feedback and serving apply too, is
textloop/core/label_values.py.)"""

from __future__ import annotations

import pandas as pd

from textloop.core.config import LabelConfig

QUEUE_COLUMNS = ["row_id", "text", "label", "reason", "source_label", "confidence", "origin"]


def split_trusted(clean: pd.DataFrame, cfg: LabelConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Trusted = has a label and (no confidence column value, per policy, or confidence ≥ min)."""
    no_label = clean["label"].isna()
    conf = pd.to_numeric(clean["confidence"], errors="coerce")
    missing_conf = conf.isna() & ~no_label
    low_conf = (conf < cfg.min_confidence) & ~no_label
    reason = pd.Series("", index=clean.index)
    reason[no_label] = "no_label"
    reason[low_conf] = "low_confidence"
    if cfg.missing_confidence == "queue":
        reason[missing_conf] = "missing_confidence"
    queued = reason != ""
    trusted = clean[~queued].reset_index(drop=True)
    queue = _queue_frame(clean[queued], reason[queued])
    report = _report(clean, trusted, queue, int(missing_conf.sum()), cfg)
    return trusted, queue, report


def _queue_frame(rows: pd.DataFrame, reason: pd.Series) -> pd.DataFrame:
    """What a labeler sees: the text, an empty label to fill, and why the row is here."""
    return pd.DataFrame({
        "row_id": rows["row_id"], "text": rows["text"], "label": "", "reason": reason,
        "source_label": rows["label"], "confidence": rows["confidence"], "origin": rows["origin"],
    })[QUEUE_COLUMNS].reset_index(drop=True)


def _report(clean: pd.DataFrame, trusted: pd.DataFrame, queue: pd.DataFrame, n_missing: int,
            cfg: LabelConfig) -> dict:
    """rows_in == rows_trusted + rows_queued, per reason."""
    report = {
        "rows_in": len(clean), "rows_trusted": len(trusted), "rows_queued": len(queue),
        "queued_by_reason": {str(k): int(v) for k, v in queue["reason"].value_counts().items()},
        "rows_missing_confidence": n_missing, "missing_confidence_policy": cfg.missing_confidence,
        "labels": {str(k): int(v) for k, v in trusted["label"].value_counts().sort_index().items()},
    }
    if report["rows_trusted"] + report["rows_queued"] != report["rows_in"]:
        raise AssertionError(f"label lost rows: {report}")
    return report


def whole_frame_steps(cfg: LabelConfig) -> bool:
    """Label-error detection, weak labels and pseudo-labels fit models on the whole frame: with
    any of them on, the stage runs over the whole frame; without, it is TRUST_PLAN
    (tasks/label/trust_plan.py: partitions allowed)."""
    return cfg.issues != "ignore" or cfg.functions is not None or cfg.pseudo.enabled


def label_counts(report: dict, labeled: pd.DataFrame, queue: pd.DataFrame, n_quarantined: int,
                 rows_in: int) -> dict:
    """The label report's counts after every step (labeled: columns label and label_origin;
    queue: reason): rows_in == labeled + queued + quarantined, asserted."""
    by_origin = labeled["label_origin"].astype(str).value_counts()
    report = {**report, "rows_in": rows_in, "rows_trusted": len(labeled),
              "rows_queued": len(queue), "rows_quarantined": n_quarantined,
              "queued_by_reason": {str(k): int(v) for k, v in queue["reason"].value_counts().items()},
              "labeled_by_origin": {o: int(by_origin.get(o, 0))
                                    for o in ("gold", "feedback", "weak", "pseudo")},
              "labels": {str(k): int(v) for k, v in
                         labeled["label"].value_counts().sort_index().items()}}
    if report["rows_trusted"] + report["rows_queued"] + report["rows_quarantined"] != rows_in:
        raise AssertionError(f"label lost rows: {report}")
    return report
