"""Alias history, rollback, approval and model cards in the API and the dashboard.

GET  /api/aliases                       pending version + alias history (newest first)
POST /api/aliases/rollback              {"reason", "user", "to"?, "force"?} (bearer token)
POST /api/versions/{v}/approve|reject   {"reason", "user"}                 (bearer token)
POST /api/versions/{v}/promote          {"reason", "user", "force": true}  (bearer token)
GET  /dashboard/versions/{v}            the version's model card and lineage (HTML)

Every decision goes through textloop.loop.aliases (the same rules as the CLI), so who, when and
why land in the alias history; serving follows the champion alias by hot reload."""

# no `from __future__ import annotations`: FastAPI must see the request classes at runtime
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from textloop.core.errors import UserError
from textloop.loop import aliases
from textloop.pipeline import registry

log = logging.getLogger(__name__)
Version = Annotated[str, Path(pattern=r"^[0-9]{1,9}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class Decision(BaseModel):
    """A person's decision: why (mandatory) and who (the name typed beside the token)."""

    model_config = ConfigDict(extra="forbid")
    reason: Text
    user: Name


class RollbackRequest(Decision):
    to: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")] | None = None
    force: bool = Field(False, description="allow a version never champion nor approved")


class PromoteRequest(Decision):
    force: bool = Field(False, description="must be true: this overrules the gate")


def _decide(action: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one decision; a refused one (not pending, nothing to roll back to) is a 409."""
    try:
        return action(*args, **kwargs).to_dict()
    except UserError as exc:
        raise HTTPException(409, str(exc)) from None


def add_lineage(app: FastAPI, guard: Callable[..., None]) -> None:
    """The routes above, on the app's model and loop database."""
    def journal() -> Any:
        return aliases.db_journal(app.state.engine)

    def name() -> str:
        return app.state.settings.model_name

    @app.get("/api/aliases")
    def alias_state() -> dict[str, Any]:
        """The pending version and the alias history (database, newest first)."""
        return {"model": name(), "pending": registry.pending_info(name()),
                "history": [m.to_dict() for m in aliases.history(app.state.engine, name(), 100)]}

    @app.post("/api/aliases/rollback", dependencies=[Depends(guard)])
    def rollback(body: RollbackRequest) -> dict[str, Any]:
        """Move champion back (to `to`, else the previous champion)."""
        return _decide(aliases.rollback, name(), journal(), reason=body.reason, user=body.user,
                       to=body.to, force=body.force)

    @app.post("/api/versions/{version}/approve", dependencies=[Depends(guard)])
    def approve(version: Version, body: Decision) -> dict[str, Any]:
        """The pending version becomes champion."""
        return _decide(aliases.approve, name(), version, journal(), reason=body.reason,
                       user=body.user)

    @app.post("/api/versions/{version}/reject", dependencies=[Depends(guard)])
    def reject(version: Version, body: Decision) -> dict[str, Any]:
        """The pending version is dropped."""
        return _decide(aliases.reject, name(), version, journal(), reason=body.reason,
                       user=body.user)

    @app.post("/api/versions/{version}/promote", dependencies=[Depends(guard)])
    def promote(version: Version, body: PromoteRequest) -> dict[str, Any]:
        """Force a version to champion against the gate (force: true and a reason)."""
        if not body.force:
            raise HTTPException(422, "promote overrules the gate: send \"force\": true")
        return _decide(aliases.force_promote, name(), version, journal(), reason=body.reason,
                       user=body.user)

    @app.get("/dashboard/versions/{version}", response_class=HTMLResponse,
             name="version_page")
    def version_page(version: Version) -> HTMLResponse:
        """The model card of a version (Markdown artifact rendered) with its alias moves."""
        return HTMLResponse(_page(name(), version))


def _page(model: str, version: str) -> str:
    """The version page's HTML (404 when the version does not exist)."""
    from textloop.pipeline.card import ARTIFACT, to_html
    from textloop.serve.dashboard import templates

    try:
        mv = registry.get_version(model, version)
    except UserError as exc:
        raise HTTPException(404, str(exc)) from None
    text = registry.run_text(mv.run_id, mv.tags.get("model_card", ARTIFACT))
    moves = [m for m in registry.alias_history(model)
             if version in (m.from_version, m.to_version)]
    return templates().get_template("version.html").render(
        model=model, version=version, card=to_html(text) if text else None,
        aliases=list(getattr(mv, "aliases", []) or []), moves=moves[::-1],
        gate=mv.tags.get("gate.reason", ""))
