"""Manual alias decisions (rollback, approve, reject, force-promote) and the alias-history
journal in the loop database. Every move goes through textloop.pipeline.registry.move_alias,
which tags the versions in MLflow; this module adds the database record (`db_journal`) and the
rules a person's decision must pass. The CLI and the dashboard both call these functions."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tasks.deploy import ALIAS
from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.loop import db
from textloop.pipeline import registry
from textloop.pipeline.history import AliasMove, Journal, rollback_target
from textloop.pipeline.registry import PENDING

log = logging.getLogger(__name__)
APPROVAL_TAGS = ("approval.state", "approval.by", "approval.at", "approval.reason")


def project_engine(project: Project) -> Engine:
    """The project's loop database (the one `textloop serve` writes), migrated."""
    return db.open_db(project.params().serve.db_url or db.default_url(project.state))


def db_journal(engine: Engine) -> Journal:
    """A journal that stores each alias move as one alias_history row."""
    def write(move: AliasMove) -> None:
        row = move.to_dict()
        db.insert_row(engine, db.alias_history, {"move_id": row.pop("id"), **row})

    return write


def history(engine: Engine, name: str | None = None, limit: int = 200) -> list[AliasMove]:
    """Recorded moves, newest first (all models, or one)."""
    query = sa.select(db.alias_history).order_by(db.alias_history.c.id.desc()).limit(limit)
    if name is not None:
        query = query.where(db.alias_history.c.model_name == name)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [AliasMove.from_dict({**r, "id": r["move_id"]}) for r in rows]


def _required(reason: str, user: str, what: str) -> tuple[str, str]:
    """A person's decision needs a reason and a name: refused (UserError) without."""
    if not reason or not reason.strip():
        raise UserError(f"{what}: a reason is required (--reason \"...\")")
    if not user or not user.strip():
        raise UserError(f"{what}: a user name is required (--user)")
    return reason.strip(), user.strip()


def _tag_approval(name: str, version: str, state: str, move: AliasMove) -> None:
    """approval.* tags on the version: the latest human decision about it."""
    client = registry.mlflow_client()
    for key, value in zip(APPROVAL_TAGS, (state, move.actor, move.at, move.reason), strict=True):
        client.set_model_version_tag(name, version, key, value)


def _holder(name: str, alias: str) -> str | None:
    held = registry.current_champion(registry.mlflow_client(), name, alias)
    return None if held is None else str(held.version)


def rollback(name: str, journal: Journal, *, reason: str, user: str,
             to: str | None = None) -> AliasMove:
    """Move champion back: to `to`, else to the holder before the current one (skipping
    versions already rolled back from). Raises UserError when there is nothing to go back to."""
    reason, user = _required(reason, user, "rollback")
    current = _holder(name, ALIAS)
    target = to or rollback_target(registry.alias_history(name), ALIAS, current)
    if target is None:
        raise UserError(f"rollback: {name} has no earlier champion than v{current}; "
                        "name one with --to VERSION")
    registry.get_version(name, target)
    if str(target) == current:
        raise UserError(f"rollback: v{target} is already the champion of {name}")
    return registry.move_alias(name, ALIAS, str(target), action="rollback", reason=reason,
                               actor=user, journal=journal)


def approve(name: str, version: str, journal: Journal, *, reason: str,
            user: str) -> AliasMove:
    """A pending version becomes champion (and stops being pending). Raises UserError when
    `version` is not the pending one."""
    reason, user = _required(reason, user, "approve")
    _must_be_pending(name, version, "approve")
    move = registry.move_alias(name, ALIAS, version, action="approve", reason=reason, actor=user,
                               journal=journal)
    registry.move_alias(name, PENDING, None, action="approve", reason=reason, actor=user,
                        journal=journal)
    _tag_approval(name, version, "approved", move)
    return move


def reject(name: str, version: str, journal: Journal, *, reason: str, user: str) -> AliasMove:
    """A pending version is dropped: the pending alias removed, the champion unchanged."""
    reason, user = _required(reason, user, "reject")
    _must_be_pending(name, version, "reject")
    move = registry.move_alias(name, PENDING, None, action="reject", reason=reason, actor=user,
                               journal=journal)
    _tag_approval(name, version, "rejected", move)
    return move


def force_promote(name: str, version: str, journal: Journal, *, reason: str,
                  user: str) -> AliasMove:
    """Make any registered version champion, also one the gate refused (the reason is
    mandatory and recorded); clears `pending` when it pointed at that version."""
    reason, user = _required(reason, user, "promote --force")
    registry.get_version(name, version)
    if _holder(name, ALIAS) == str(version):
        raise UserError(f"promote: v{version} is already the champion of {name}")
    move = registry.move_alias(name, ALIAS, str(version), action="force", reason=reason,
                               actor=user, journal=journal)
    if _holder(name, PENDING) == str(version):
        registry.move_alias(name, PENDING, None, action="force", reason=reason, actor=user,
                            journal=journal)
    _tag_approval(name, str(version), "forced", move)
    return move


def _must_be_pending(name: str, version: str, what: str) -> None:
    pending = _holder(name, PENDING)
    if pending != str(version):
        now = f"v{pending} is pending" if pending else "no version is pending"
        raise UserError(f"{what}: {name} v{version} is not pending approval ({now})")
