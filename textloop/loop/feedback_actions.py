"""`textloop feedback add/check` and `label import`: store corrections; `check` asks the retrain
policy (textloop/loop/retrain_policy.py), the same one the monitor and the dashboard use."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.monitor.retrain_rule import Starter
from textloop.core.layout import Project

log = logging.getLogger(__name__)


def known_labels(project: Project) -> list[str] | None:
    """The label set corrections must come from: the champion's, else the last labeled data's."""
    from textloop.pipeline.registry import champion_info

    champ = champion_info(project)
    if champ is not None:
        return champ["labels"]
    report = project.path(project.params().paths.label_report)
    if report.is_file():
        return sorted(json.loads(report.read_text(encoding="utf-8")).get("labels", {})) or None
    return None


def add_rows(project: Project, df: Any, origin: Path, source: str) -> dict[str, Any]:
    """Validate corrections (named by file, row, column on error) and append them to the store."""
    from tasks.feedback import validate_rows
    from textloop.loop.store import append_versioned

    rows = validate_rows(df, origin, known_labels(project))
    batch = append_versioned(project, rows, source)
    return {"batch": str(batch), "rows": len(rows), "source": source}


def add(project: Project, path: Path, source: str) -> dict[str, Any]:
    """Read a corrections file and append it."""
    from textloop.core.tables import read_table

    df, _ = read_table(path)
    return add_rows(project, df, path, source)


def champion_scorer(project: Project) -> Callable[[pd.DataFrame], float]:
    """Rows (text, label) -> the champion's accuracy on them (0..1); the model is loaded when
    first called. Raises UserError when there is no champion yet."""

    def accuracy(rows: pd.DataFrame) -> float:
        from tasks.evaluate.metrics import score
        from textloop.pipeline.registry import load_champion

        model, _ = load_champion(project)
        pred = model.predict_frame(rows["text"].astype(str).tolist())["label"].tolist()
        return score(rows["label"].astype(str).tolist(), pred)["accuracy"]

    return accuracy


def check(project: Project, dry_run: bool = False, starter: Starter | None = None
          ) -> dict[str, Any]:
    """`feedback check`: the retrain policy with trigger "feedback", its accuracy input the
    champion's accuracy on new feedback (store rows past the watermark + DB rows not exported;
    one definition: textloop.loop.retrain_policy.new_feedback). Same cooldown, single-flight and
    decisions table as the monitor. `starter` replaces the deployment start (the CLI passes an
    in-process one when no Prefect server is up); `dry_run` decides only (nothing recorded,
    exported or started). Returns the decision as a JSON-ready summary."""
    from textloop.loop.retrain_policy import policy_context, run_policy

    ctx = policy_context(project, starter=starter, scorer=champion_scorer(project))
    decision = run_policy(ctx, None, trigger="feedback", dry_run=dry_run)
    inputs = decision.inputs
    return {"retrain": decision.fire, "dry_run": dry_run, "trigger": decision.trigger,
            "new_rows": inputs["pending_rows"] + inputs["unconsumed_rows"],
            "pending_db_rows": inputs["pending_rows"],
            "unconsumed_store_rows": inputs["unconsumed_rows"],
            "accuracy": inputs["live_accuracy"], "reasons": decision.reasons,
            "blocked": decision.blocked, "decision_id": decision.decision_id,
            "exported_rows": decision.exported_rows, "flow_run_id": decision.flow_run_id}
