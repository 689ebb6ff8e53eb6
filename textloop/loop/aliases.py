"""Decisions on registry aliases: rollback, approve, reject, force-promote, and the moves of the
gate and the shadow policy (through `db_journal`); the alias-history journal.

The loop database is the authority on which version holds each alias (`alias_state`). Every
decision is one compare-and-set transaction there (UPDATE ... WHERE version = the expected one;
the primary key for an alias's first holder) that also writes its moves to `alias_history`, so
of two concurrent decisions only one can win; the other gets DecisionConflict naming the move
that won (HTTP 409, CLI exit 3). The registry (MLflow aliases and tags) is written after, and
the moves marked applied. A crash between the two writes leaves moves not applied: `reconcile`
(at API start-up and before every decision) replays them, so the registry comes to agree with
the database's record, the intent. An alias moved outside textloop (the MLflow UI) is adopted
and recorded as action `external`. The CLI and the API both call these functions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tasks.deploy import ALIAS
from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.loop import db
from textloop.pipeline import registry
from textloop.pipeline.history import AliasMove, rollback_target
from textloop.pipeline.registry import PENDING

log = logging.getLogger(__name__)
APPROVAL_TAGS = ("approval.state", "approval.by", "approval.at", "approval.reason")
STATE, HISTORY = db.alias_state, db.alias_history


class DecisionConflict(UserError):
    """A concurrent or earlier decision already moved what this one expected (HTTP 409)."""

    exit_code = 3


def project_engine(project: Project) -> Engine:
    """The project's loop database (the one `textloop serve` writes), migrated."""
    return db.open_db(project.params().serve.db_url or db.default_url(project.state))


@dataclass(frozen=True)
class DbJournal:
    """The loop database as the alias authority registry.move_alias claims moves in."""

    engine: Engine

    def claim(self, moves: Sequence[AliasMove]) -> None:
        """Reconcile the model, then commit the moves as one compare-and-set decision."""
        reconcile(self.engine, moves[0].model_name)
        commit(self.engine, moves)

    def applied(self, moves: Sequence[AliasMove]) -> None:
        """The registry was written: the moves are no longer replayed."""
        mark_applied(self.engine, moves)


def db_journal(engine: Engine) -> DbJournal:
    """The journal every alias move of a project goes through (its loop database)."""
    return DbJournal(engine)


def _history_row(move: AliasMove, applied: bool) -> dict:
    """An alias move as an alias_history row (its id as move_id, whether it was applied)."""
    row = move.to_dict()
    return {"created_at": db.utcnow(), "move_id": row.pop("id"), "applied": applied, **row}


def _swap(conn: Connection, move: AliasMove) -> bool:
    """Compare-and-set one alias: move.from_version -> move.to_version. False when the
    authority holds another version (a concurrent decision won). An alias's first holder is
    inserted; two first inserts collide on the primary key (IntegrityError)."""
    key = (STATE.c.model_name == move.model_name) & (STATE.c.alias == move.alias)
    values = {"version": move.to_version, "move_id": move.id, "updated_at": db.utcnow()}
    held = (STATE.c.version.is_(None) if move.from_version is None
            else STATE.c.version == move.from_version)
    if conn.execute(STATE.update().where(key, held).values(**values)).rowcount == 1:
        return True
    if conn.execute(sa.select(STATE.c.alias).where(key)).first() is not None:
        return False
    conn.execute(STATE.insert().values(model_name=move.model_name, alias=move.alias, **values))
    return True


class _Lost(Exception):
    """Rolls a decision's transaction back when one of its compare-and-sets fails."""


def commit(engine: Engine, moves: Sequence[AliasMove]) -> None:
    """Every move of one decision in one transaction of the authority, or none of them;
    DecisionConflict naming the winning move when another decision got there first."""
    try:
        with engine.begin() as conn:
            if not all(_swap(conn, m) for m in moves):
                raise _Lost
            conn.execute(HISTORY.insert(), [_history_row(m, applied=False) for m in moves])
    except (_Lost, sa.exc.IntegrityError):
        raise DecisionConflict(_conflict_line(engine, moves)) from None


def _conflict_line(engine: Engine, moves: Sequence[AliasMove]) -> str:
    """What won: the move that set the alias this decision expected to find elsewhere."""
    for move in moves:
        row = _state_row(engine, move.model_name, move.alias)
        if row is not None and row["version"] != move.from_version:
            won = _move_by_id(engine, row["move_id"])
            what = won.line() if won else f"now v{row['version']}"
            return (f"{move.action}: {move.alias} of {move.model_name} is no longer "
                    f"{_v(move.from_version)}; another decision won: {what}")
    return f"{moves[0].action}: a concurrent decision on {moves[0].model_name} won; try again"


def _v(version: str | None) -> str:
    return f"v{version}" if version else "unset"


def mark_applied(engine: Engine, moves: Sequence[AliasMove]) -> None:
    """The registry agrees with these moves."""
    with engine.begin() as conn:
        conn.execute(HISTORY.update().where(HISTORY.c.move_id.in_([m.id for m in moves]))
                     .values(applied=True))


def _state_row(engine: Engine, name: str, alias: str) -> dict | None:
    """The alias_state row of one alias of a model, None when the alias was never set."""
    query = sa.select(STATE).where(STATE.c.model_name == name, STATE.c.alias == alias)
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return None if row is None else dict(row)


def _move_by_id(engine: Engine, move_id: str | None) -> AliasMove | None:
    """The recorded alias move with this id, None when there is none."""
    query = sa.select(HISTORY).where(HISTORY.c.move_id == (move_id or ""))
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return None if row is None else AliasMove.from_dict({**row, "id": row["move_id"]})


def _apply(engine: Engine, moves: Sequence[AliasMove]) -> None:
    """Write decided moves to the registry (alias, history tag, approval tags), then mark them
    applied; what reconcile replays after a crash."""
    for move in moves:
        registry.apply_move(move)
        approval = _approval(move)
        if approval is not None:
            _tag_approval(move.model_name, approval[0], approval[1], move)
    mark_applied(engine, moves)


def decide(engine: Engine, moves: Sequence[AliasMove]) -> AliasMove:
    """One decision: committed in the authority (compare-and-set), then applied to the
    registry. Returns its first move."""
    commit(engine, moves)
    _apply_committed(engine, moves)
    return moves[0]


def _apply_committed(engine: Engine, moves: Sequence[AliasMove]) -> None:
    """Apply a decision just committed. Once committed, a reconciliation in another request or
    process may replay the same moves at the same moment (to it they are committed and not yet
    applied), and two writers of one new registry tag collide on its key (MLflow's
    MlflowException). The writes are idempotent: retried (tenacity, 3 attempts) for the moves
    still unapplied, so what the other writer finished is not written again and the decision
    stands; a registry that keeps failing raises, and the moves stay for reconciliation."""
    from mlflow.exceptions import MlflowException
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random

    for attempt in Retrying(retry=retry_if_exception_type(MlflowException),
                            stop=stop_after_attempt(3), wait=wait_random(0.05, 0.3),
                            reraise=True):
        with attempt:
            if left := _unapplied(engine, moves):
                _apply(engine, left)


def _unapplied(engine: Engine, moves: Sequence[AliasMove]) -> list[AliasMove]:
    """The moves (in their order) the authority still records as not applied to the registry."""
    query = sa.select(HISTORY.c.move_id).where(HISTORY.c.move_id.in_([m.id for m in moves]),
                                               HISTORY.c.applied.is_(False))
    with engine.connect() as conn:
        open_ids = {r[0] for r in conn.execute(query)}
    return [m for m in moves if m.id in open_ids]


def reconcile(engine: Engine, name: str, adopt: bool = True) -> list[AliasMove]:
    """Make the registry agree with the authority: replay the moves committed but not applied
    (oldest first), then (`adopt`) adopt aliases moved outside textloop. Returns what it
    changed. The registry is read only when there is something to replay or adopt."""
    query = (sa.select(HISTORY).where(HISTORY.c.model_name == name,
                                      HISTORY.c.applied.is_(False)).order_by(HISTORY.c.id))
    with engine.connect() as conn:
        pending = [AliasMove.from_dict({**r, "id": r["move_id"]})
                   for r in conn.execute(query).mappings().all()]
    if pending:
        log.warning("replaying %d alias move(s) of %s the registry missed", len(pending), name)
    for move in pending:
        _replay(engine, move)
    return pending + (_adopt(engine, name) if adopt else [])


def _replay(engine: Engine, move: AliasMove) -> None:
    """Apply one missed move; a move onto a version deleted since cannot be applied: it is
    marked applied (logged), and adoption records what the registry holds instead. A registry
    error on a version that exists leaves the move for the next reconciliation."""
    from mlflow.exceptions import MlflowException

    try:
        _apply(engine, [move])
    except MlflowException as exc:
        if move.to_version is None or move.to_version in registry.existing_versions(
                move.model_name):
            # the decision that committed it may be applying it right now (two writers of one
            # registry tag collide): it stays unapplied, and the next reconciliation replays it
            log.warning("alias move %s -> v%s not replayed now (%s); replayed next time",
                        move.alias, move.to_version, exc)
            return
        log.warning("alias move %s -> v%s not replayed: the version was deleted (%s)",
                    move.alias, move.to_version, exc)
        mark_applied(engine, [move])


def _registry_aliases(name: str) -> dict[str, str] | None:
    """alias -> version in the registry (None when the model is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        model = registry.mlflow_client().get_registered_model(name)
    except MlflowException:
        return None
    return {str(a): str(v) for a, v in (model.aliases or {}).items()}


def _adopt(engine: Engine, name: str) -> list[AliasMove]:
    """Aliases the registry holds differently from the authority's applied record were moved
    outside textloop (or before the authority existed): recorded as `external` moves."""
    found = _registry_aliases(name)
    if found is None:
        return []
    settled = sa.select(HISTORY.c.move_id).where(HISTORY.c.applied.is_(False))
    query = sa.select(STATE).where(STATE.c.model_name == name)
    with engine.connect() as conn:
        rows = {r["alias"]: r["version"] for r in conn.execute(query).mappings().all()}
        busy = {r["alias"] for r in conn.execute(  # a decision still being written: not drift
            query.where(STATE.c.move_id.in_(settled))).mappings().all()}
    moves = [AliasMove(name, alias, rows.get(alias), found.get(alias), "external",
                       "found in the registry", "registry")
             for alias in sorted(set(rows) | set(found))
             if alias not in busy and rows.get(alias) != found.get(alias)]
    for move in moves:
        try:
            with engine.begin() as conn:
                if _swap(conn, move):
                    conn.execute(HISTORY.insert(), [_history_row(move, applied=True)])
        except sa.exc.IntegrityError:  # a concurrent reconcile recorded it
            continue
    return moves


def history(engine: Engine, name: str | None = None, limit: int = 200) -> list[AliasMove]:
    """Recorded moves, newest first (all models, or one); `external` adoptions left out."""
    query = (sa.select(HISTORY).where(HISTORY.c.action != "external")
             .order_by(HISTORY.c.id.desc()).limit(limit))
    if name is not None:
        query = query.where(HISTORY.c.model_name == name)
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


def _approval(move: AliasMove) -> tuple[str, str] | None:
    """(version, approval.state) a move decides: approve/force put a version in champion,
    reject drops it from pending; other moves decide no approval."""
    if move.alias == ALIAS and move.action in ("approve", "force") and move.to_version:
        return move.to_version, "approved" if move.action == "approve" else "forced"
    if move.alias == PENDING and move.action == "reject" and move.from_version:
        return move.from_version, "rejected"
    return None


def _tag_approval(name: str, version: str, state: str, move: AliasMove) -> None:
    """approval.* tags on the version: the latest human decision about it."""
    client = registry.mlflow_client()
    for key, value in zip(APPROVAL_TAGS, (state, move.actor, move.at, move.reason), strict=True):
        client.set_model_version_tag(name, version, key, value)


def _holder(engine: Engine, name: str, alias: str) -> str | None:
    """The version holding `alias` by the authority (reconciled before every decision)."""
    row = _state_row(engine, name, alias)
    if row is not None:
        return row["version"]
    held = registry.current_champion(registry.mlflow_client(), name, alias)
    return None if held is None else str(held.version)


def _begin(journal: DbJournal, name: str) -> Engine:
    """Every person's decision starts by making the registry agree with the authority."""
    reconcile(journal.engine, name)
    return journal.engine


def rollback(name: str, journal: DbJournal, *, reason: str, user: str,
             to: str | None = None, force: bool = False) -> AliasMove:
    """Move champion back: to `to`, else to the latest earlier champion still in the registry
    (skipping deleted versions and versions already rolled back from). A version that was
    never champion nor approved needs `force` (the rule promote follows). Raises UserError
    when there is nothing to go back to."""
    reason, user = _required(reason, user, "rollback")
    engine = _begin(journal, name)
    current = _holder(engine, name, ALIAS)
    target = to or rollback_target(registry.alias_history(name), ALIAS, current,
                                   registry.existing_versions(name))
    if target is None:
        since = f" than v{current}" if current else ""
        raise UserError(f"rollback: {name} has no earlier champion{since} still in the "
                        "registry; name one with --to VERSION")
    registry.get_version(name, target)
    if str(target) == current:
        raise UserError(f"rollback: v{target} is already the champion of {name}")
    refused = needs_approval(name, str(target))
    if refused and not force:
        raise UserError(f"rollback: {refused}; approve it or pass --force")
    action = "force" if refused else "rollback"
    return decide(engine, [AliasMove(name, ALIAS, current, str(target), action, reason, user),
                           *_other_roles(engine, name, str(target), action, reason, user)])


def needs_approval(name: str, version: str) -> str | None:
    """Why `version` may not become champion without --force (None: it may): it never held
    the champion alias and no person approved or forced it. The one rule rollback and
    promote share."""
    mv = registry.get_version(name, version)
    if (mv.tags or {}).get("approval.state") in ("approved", "forced"):
        return None
    if any(m.alias == ALIAS and m.to_version == str(version)
           for m in registry.alias_history(name)):
        return None
    pending = " (it is pending approval)" if "pending" in (getattr(mv, "aliases", None) or
                                                         []) else ""
    return f"{name} v{version} was never champion nor approved{pending}"


def _other_roles(engine: Engine, name: str, version: str, action: str, reason: str,
                 user: str) -> list[AliasMove]:
    """One version holds one alias role: moves removing the other aliases `version` holds
    (pending, challenger) when it becomes champion."""
    query = sa.select(STATE.c.alias).where(STATE.c.model_name == name,
                                           STATE.c.version == version, STATE.c.alias != ALIAS)
    with engine.connect() as conn:
        held = [r[0] for r in conn.execute(query).all()]
    return [AliasMove(name, alias, version, None, action, reason, user) for alias in held]


def approve(name: str, version: str, journal: DbJournal, *, reason: str,
            user: str) -> AliasMove:
    """A pending version becomes champion and stops being pending, in one decision. Raises
    DecisionConflict when `version` is not the pending one (naming what happened to it)."""
    reason, user = _required(reason, user, "approve")
    engine = _begin(journal, name)
    _must_be_pending(engine, name, version, "approve")
    return decide(engine, [
        AliasMove(name, ALIAS, _holder(engine, name, ALIAS), str(version), "approve", reason,
                  user),
        AliasMove(name, PENDING, str(version), None, "approve", reason, user),
        *(m for m in _other_roles(engine, name, str(version), "approve", reason, user)
          if m.alias != PENDING)])


def reject(name: str, version: str, journal: DbJournal, *, reason: str,
           user: str) -> AliasMove:
    """A pending version is dropped: the pending alias removed, the champion unchanged."""
    reason, user = _required(reason, user, "reject")
    engine = _begin(journal, name)
    _must_be_pending(engine, name, version, "reject")
    return decide(engine, [AliasMove(name, PENDING, str(version), None, "reject", reason, user)])


def force_promote(name: str, version: str, journal: DbJournal, *, reason: str,
                  user: str) -> AliasMove:
    """Make any registered version champion, also one the gate refused (the reason is
    mandatory and recorded); clears `pending` when it pointed at that version."""
    reason, user = _required(reason, user, "promote --force")
    engine = _begin(journal, name)
    registry.get_version(name, version)
    current = _holder(engine, name, ALIAS)
    if current == str(version):
        raise UserError(f"promote: v{version} is already the champion of {name}")
    return decide(engine, [AliasMove(name, ALIAS, current, str(version), "force", reason, user),
                           *_other_roles(engine, name, str(version), "force", reason, user)])


def _must_be_pending(engine: Engine, name: str, version: str, what: str) -> None:
    """DecisionConflict unless `version` holds `pending`, naming the move that decided it."""
    pending = _holder(engine, name, PENDING)
    if pending == str(version):
        return
    now = f"v{pending} is pending" if pending else "no version is pending"
    row = _state_row(engine, name, PENDING)
    last = _move_by_id(engine, row["move_id"]) if row else None
    decided = f"; {last.line()}" if last and str(version) in (last.from_version,
                                                                last.to_version) else ""
    raise DecisionConflict(f"{what}: {name} v{version} is not pending approval ({now})"
                           f"{decided}")
