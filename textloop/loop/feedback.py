"""`textloop feedback add/check` and `label import`: store corrections, decide on a retrain."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

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


def check(project: Project) -> dict[str, Any]:
    """Score the champion on feedback not yet trained on; decide whether to retrain."""
    from tasks.evaluate import score
    from tasks.feedback import retrain_decision, unconsumed
    from textloop.pipeline.registry import load_champion

    p = project.params()
    fresh = unconsumed(project.path(p.paths.feedback), project.watermark_path)
    accuracy = None
    if len(fresh):
        model, _ = load_champion(project)
        pred = model.predict_frame(fresh["text"].tolist())["label"].tolist()
        accuracy = score(fresh["label"].astype(str).tolist(), pred)["accuracy"]
    fire, reason = retrain_decision(accuracy, len(fresh), p.feedback.min_accuracy,
                                    p.feedback.min_new_rows)
    return {"retrain": fire, "reason": reason, "accuracy": accuracy, "new_rows": len(fresh)}
