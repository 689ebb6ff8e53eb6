"""The served champion's evidence for the dashboard and GET /api/evidence: the 95% CIs
of its test metrics, its calibration error and behavioural pass rate, the gate's paired
difference with its CI and McNemar p-value, and the slice table. Read from the version's
registry tags (textloop.pipeline.deploy_step.evidence_tags, registry.record): no extra store."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from textloop.pipeline.card import small_test_note


def _float(value: str | None) -> float | None:
    """A numeric tag ('' or absent: None)."""
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _interval(value: str | None) -> list[float] | None:
    """A 'low,high' tag as [low, high] (None when absent or malformed)."""
    parts = [_float(v) for v in (value or "").split(",")]
    return parts if len(parts) == 2 and None not in parts else None  # type: ignore[return-value]


def evidence_of(tags: dict[str, str]) -> dict[str, Any]:
    """The evidence a version's tags carry, typed; keys with no tag are None, slices []."""
    try:
        table = json.loads(tags.get("test_slices") or "{}")
    except ValueError:
        table = {}
    slices = [{"slice": k, "rows": v[0], "accuracy": v[1], "low": v[2], "high": v[3]}
              for k, v in table.items() if isinstance(v, list) and len(v) == 4]
    return {
        "accuracy": _float(tags.get("test_accuracy")),
        "accuracy_ci": _interval(tags.get("test_accuracy_ci")),
        "f1_macro": _float(tags.get("test_f1_macro")),
        "f1_macro_ci": _interval(tags.get("test_f1_macro_ci")),
        "rows": int(rows) if (rows := _float(tags.get("test_rows"))) is not None else None,
        "small_test": small_test_note(int(rows)) if rows is not None else None,
        "ece": _float(tags.get("test_ece")),
        "behaviour_pass_rate": _float(tags.get("behaviour_pass_rate")),
        "gate": {"rule": tags.get("gate.rule") or None, "metric": tags.get("gate.metric"),
                 "champion_version": tags.get("gate.champion_version") or None,
                 "candidate_score": _float(tags.get("gate.candidate_score")),
                 "champion_score": _float(tags.get("gate.champion_score")),
                 "diff": _float(tags.get("gate.diff")),
                 "diff_ci": [_float(tags.get("gate.diff_ci_low")),
                             _float(tags.get("gate.diff_ci_high"))]
                 if _float(tags.get("gate.diff_ci_low")) is not None else None,
                 "p_value": _float(tags.get("gate.p_value")),
                 "note": tags.get("gate.note") or ""},
        "slices": slices,
        "slices_skipped": tags.get("test_slices_skipped") or "",
    }


def add_evidence(app: FastAPI, guard: Callable[..., None]) -> None:
    """GET /api/evidence (the served version's evidence) and the dashboard block's helper.
    `guard` is unused: nothing here changes state."""
    from textloop.serve.champion import model_info
    from textloop.serve.dashboard import templates

    templates().globals["evidence_of"] = evidence_of

    @app.get("/api/evidence")
    def evidence() -> dict[str, Any]:
        info = model_info(app.state.watcher)
        return {"version": info.get("version"), **evidence_of(info.get("tags") or {})}
