"""The shadow policy wired to the loop: read the paired log of champion and challenger, compare
(tasks/monitor/shadow_rule.py), and promote or retire the challenger; every decision, waiting included, is a
row of the decisions table (trigger "shadow") and a decisions.jsonl line, like retrain
decisions. Alias moves go through textloop/pipeline/registry.py."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from tasks.monitor.shadow_rule import compare, decide, shared_classes
from textloop.core.config import Params
from textloop.core.layout import Project
from textloop.loop import db

log = logging.getLogger(__name__)
Resolver = Callable[[str, str, str, bool, str], None]  # registry.resolve_challenger
Emitter = Callable[[str, dict[str, Any]], Any]


def shadow_versions(name: str, params: Params) -> tuple[str | None, str | None]:
    """(champion version, challenger version) from the registry; None where an alias is unset."""
    from textloop.pipeline.registry import current_champion, mlflow_client

    client = mlflow_client()
    champ = current_champion(client, name)
    chal = current_champion(client, name, params.shadow.alias)
    return (champ and str(champ.version)), (chal and str(chal.version))


def run_shadow_policy(engine: Engine, params: Params, name: str, champion: str | None,
                      challenger: str | None, resolver: Resolver,
                      emit: Emitter | None = None, journal: Any = None,
                      shared: list[str] | None = None) -> dict[str, Any]:
    """Compare and act: returns {action, reason, comparison, champion, challenger}. No
    challenger (or it is the champion): action "none", nothing recorded. `shared`: the classes
    both versions know when their label sets differ (tasks.monitor.shadow_rule.shared_classes):
    live accuracy is compared on those only."""
    if challenger is None or champion is None or challenger == champion:
        return {"action": "none", "reason": "no challenger in shadow", "champion": champion,
                "challenger": challenger}
    pairs = db.read_shadow_pairs(engine, champion, challenger, params.monitor.window)
    cmp = compare(pairs, shared)
    action, reason = decide(cmp, params.shadow)
    out = {"action": action, "reason": reason, "comparison": cmp.to_dict(),
           "champion": champion, "challenger": challenger}
    if action != "wait":
        resolver(name, params.shadow.alias, challenger, action == "promote", reason)
    row = {"trigger": "shadow", "fired": action != "wait",
           "reasons": [f"{action} challenger v{challenger} (champion v{champion}): {reason}"],
           "blocked": [] if action != "wait" else [f"waiting: {reason}"],
           "metrics": out, "exported_rows": 0, "export_file": None, "flow_run_id": None}
    out["decision_id"] = db.insert_row(engine, db.decisions, row)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        with journal.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": out["decision_id"], "at": str(db.utcnow()), **row},
                                default=str) + "\n")
    if emit is not None and action != "wait":
        emit("challenger_promoted" if action == "promote" else "challenger_retired", out)
    log.info("shadow decision: %s", row["reasons"][0])
    return out


def shadow_policy(project: Project) -> dict[str, Any]:
    """run_shadow_policy for a project: its loop database, registry and alert sinks."""
    from textloop.loop.alerts import emit_for
    from textloop.loop.aliases import db_journal
    from textloop.loop.retrain_policy import policy_db_url
    from textloop.pipeline import tracking
    from textloop.pipeline.registry import resolve_challenger, served_model

    tracking.setup(project)
    params = project.params()
    name = served_model(project)[0]
    champion, challenger = shadow_versions(name, params)
    engine = db.open_db(policy_db_url(project))
    resolver = functools.partial(resolve_challenger, journal=db_journal(engine))
    return run_shadow_policy(engine, params, name, champion, challenger, resolver,
                             lambda event, payload: emit_for(project, event, payload),
                             project.layout.decisions_journal,
                             _shared(name, champion, challenger))


def _shared(name: str, champion: str | None, challenger: str | None) -> list[str] | None:
    """The classes both registered versions were trained on, when their label sets differ."""
    from textloop.pipeline.registry import get_version, labels_of

    if champion is None or challenger is None:
        return None
    return shared_classes(labels_of(get_version(name, champion)),
                          labels_of(get_version(name, challenger)))
