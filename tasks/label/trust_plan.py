"""The label stage's trusted/queue split as a plan (TRUST_PLAN, textloop.core.frame_plan):
tasks.label.split_trusted on each partition (row-local, no global step), the report over all of
them. With label-error detection, weak labels or pseudo-labels on, the stage runs over the whole
frame instead (tasks.label.whole_frame_steps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from tasks.label import _report, label_counts, split_trusted
from textloop.core.config import LabelConfig
from textloop.core.frame_plan import FramePlan, Step


def _trust_step(df: pd.DataFrame, cfg: LabelConfig, decision: None) -> Step:
    """split_trusted on one partition: its labeled rows (with label_origin) and its queue."""
    from textloop.core.splits import label_origins

    trusted, queue, rep = split_trusted(df.reset_index(drop=True), cfg)
    return Step(parts={"labeled": trusted.assign(label_origin=label_origins(trusted)),
                       "queue": queue.assign(suggested_label="")},
                facts={"rows": len(df), "missing": rep["rows_missing_confidence"]})


def _trust_report(scanned: Sequence[Any], applied: Sequence[dict], decision: None,
                  outputs: Mapping[str, pd.DataFrame], cfg: LabelConfig) -> dict:
    """split_trusted's report over every partition, with label_counts' counts."""
    n = sum(f["rows"] for f in applied)
    rep = _report(pd.RangeIndex(n), outputs["labeled"], outputs["queue"],
                  sum(f["missing"] for f in applied), cfg)
    return label_counts(rep, outputs["labeled"], outputs["queue"], 0, n)


TRUST_PLAN = FramePlan(apply=_trust_step, finish=_trust_report,
                       outputs={"labeled": ("labeled",), "queue": ("queue",)},
                       compact={"labeled": ("label", "label_origin"), "queue": ("reason",)})
