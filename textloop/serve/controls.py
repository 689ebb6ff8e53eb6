"""Alerts and clean-up in the dashboard: the newest alert deliveries
(textloop.loop.alerts logs every one in `alert_deliveries`) and storage clean-up
(textloop.loop.gc.collect) started from the page: a dry run shows what would go and how many
bytes; a real run needs the bearer token like every state-changing endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict

from textloop.loop import db

DELIVERIES_SHOWN = 10


class GcRequest(BaseModel):
    """POST /api/gc body: dry_run (default true) reports without removing anything."""

    model_config = ConfigDict(extra="forbid")
    dry_run: bool = True


def recent_deliveries(engine: Any, limit: int = DELIVERIES_SHOWN) -> list[dict[str, Any]]:
    """The newest alert deliveries, newest first (event, sink, ok, attempts, status, time)."""
    rows = db.recent_rows(engine, db.alert_deliveries, limit)[::-1]
    return [{k: r[k] for k in ("created_at", "event", "sink", "ok", "attempts", "status")}
            for r in rows]


def run_gc(app: FastAPI, dry_run: bool) -> dict[str, Any]:
    """gc.collect on the API's project; 503 when the API runs without a project folder, 409
    when a live lifecycle run holds the workspace (a real run waits for no one)."""
    from textloop.core.errors import UserError
    from textloop.core.layout import Project
    from textloop.loop.gc import collect

    root = app.state.settings.project_root
    if root is None:
        raise HTTPException(503, "the API was started without a project folder")
    try:
        return collect(Project(root), dry_run=dry_run, by="dashboard").to_dict()
    except UserError as exc:  # LockTimeout is a UserError naming the holder
        raise HTTPException(409, str(exc)) from exc


def add_controls(app: FastAPI, guard: Callable[..., None]) -> None:
    """GET /api/alerts, POST /api/gc (bearer token)."""

    @app.get("/api/alerts")
    def alerts() -> dict[str, Any]:
        """The newest alert deliveries (the dashboard's table)."""
        return {"deliveries": recent_deliveries(app.state.engine)}

    @app.post("/api/gc", dependencies=[Depends(guard)])
    def gc(body: GcRequest) -> dict[str, Any]:
        """Storage clean-up; dry_run (default) only reports what would be removed."""
        return run_gc(app, body.dry_run)
