"""policy: decide whether the loop retrains now.

The pure rule (inputs -> triggers, guards -> decision). textloop/loop/retrain_policy.py gathers the
inputs, holds the single-flight lock, records the decision and starts the deployment.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from textloop.core.config import Params

log = logging.getLogger(__name__)

Starter = Callable[[dict[str, Any]], str]          # lifecycle parameters -> flow run id
Exporter = Callable[[pd.DataFrame], Path]          # feedback rows -> new store batch file
ActiveRuns = Callable[[], list[str]]               # ids of lifecycle runs not finished yet
Scorer = Callable[[pd.DataFrame], float]           # labeled rows -> champion accuracy on them
TRIGGERS = ("monitor", "feedback", "manual")       # who asked: the monitor flow, the CLI, a person
ACCURACY_ON = {"live": "live accuracy", "new feedback": "accuracy on new feedback"}


@dataclass
class PolicyInputs:
    """Everything the rule looks at, gathered before deciding (and logged with the decision)."""

    live_accuracy: float | None
    n_labeled: int
    alerts: list[str]
    pending_rows: int            # feedback in the DB not yet exported to the store
    unconsumed_rows: int         # store rows no training run has ingested yet
    last_fired_at: dt.datetime | None
    active_runs: list[str]
    now: dt.datetime
    accuracy_on: str = "live"    # "live": predictions that got feedback; "new feedback": new rows

    @property
    def new_rows(self) -> int:
        """Labeled rows a retrain would learn from that the champion has not seen."""
        return self.pending_rows + self.unconsumed_rows


@dataclass
class Decision:
    """Fire or not, with every reason for (triggers) and against (guards)."""

    fire: bool
    trigger: str
    reasons: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    exported_rows: int = 0
    export_file: str | None = None
    flow_run_id: str | None = None
    decision_id: int | None = None   # its row in the decisions table (None: not recorded)


def triggers(inputs: PolicyInputs, params: Params) -> list[str]:
    """Why a retrain would help: accuracy drop, drift alarms, or plenty of new labels."""
    fb, out = params.feedback, []
    if inputs.live_accuracy is not None and inputs.live_accuracy < fb.min_accuracy:
        what = "labeled predictions" if inputs.accuracy_on == "live" else "rows"
        out.append(f"{ACCURACY_ON[inputs.accuracy_on]} {inputs.live_accuracy:.3f} < "
                   f"{fb.min_accuracy} on {inputs.n_labeled} {what}")
    if params.retrain.on_drift:
        out.extend(f"drift: {a}" for a in inputs.alerts if not a.startswith("live accuracy"))
    if inputs.new_rows >= fb.min_new_rows:
        out.append(f"{inputs.new_rows} new labeled rows >= {fb.min_new_rows}")
    return out


def waivable_guards(inputs: PolicyInputs, params: Params) -> dict[str, str]:
    """The guards a person may override (name -> why it blocks): disabled, cooldown, too few
    new rows. Single-flight is not among them: two runs never share the workspace."""
    rt, out = params.retrain, {}
    if not rt.enabled:
        out["retrain.enabled"] = "retrain.enabled is false"
    if inputs.last_fired_at is not None:
        ready = inputs.last_fired_at + dt.timedelta(minutes=rt.cooldown_minutes)
        if inputs.now < ready:
            out["cooldown"] = (f"last retrain {inputs.last_fired_at:%Y-%m-%d %H:%M:%S}, "
                               f"next allowed after {ready:%Y-%m-%d %H:%M:%S} UTC")
    if inputs.new_rows < rt.min_labeled_rows:
        out["min_labeled_rows"] = (f"only {inputs.new_rows} new labeled rows < "
                                   f"retrain.min_labeled_rows {rt.min_labeled_rows}")
    return out


def guards(inputs: PolicyInputs, params: Params, manual: bool = False) -> list[str]:
    """Why not now: a run in flight, and (unless a person asked) disabled, cooling down, nothing
    new to learn from."""
    out = []
    if inputs.active_runs:
        out.append(f"single-flight: lifecycle run {inputs.active_runs[0]} is still in flight")
    if manual:
        return out
    for name, why in waivable_guards(inputs, params).items():
        out.append(f"cooldown: {why}" if name == "cooldown" else why)
    return out


def decide(inputs: PolicyInputs, params: Params, trigger: str = "monitor") -> Decision:
    """The rule: fire when at least one trigger holds and no guard blocks. A manual request is
    its own trigger and waives the waivable guards, each waiver named in the reasons
    (e.g. "manual: cooldown skipped (last retrain ...)").

    Raises ValueError for a trigger outside TRIGGERS."""
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown policy trigger {trigger!r} (known: {', '.join(TRIGGERS)})")
    manual = trigger == "manual"
    if manual:
        reasons = ["requested by a person", *(f"manual: {name} skipped ({why})" for name, why
                                              in waivable_guards(inputs, params).items())]
    else:
        reasons = triggers(inputs, params)
    blocked = guards(inputs, params, manual)
    if not reasons:
        blocked = ["no trigger: accuracy, drift and new-row counts within limits", *blocked]
    data = asdict(inputs)
    data["last_fired_at"] = str(inputs.last_fired_at) if inputs.last_fired_at else None
    data["now"] = str(inputs.now)
    return Decision(fire=bool(reasons) and not blocked, trigger=trigger, reasons=reasons,
                    blocked=blocked, inputs=data)
