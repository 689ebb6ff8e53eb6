"""Alias history: one record per move of a registry alias (champion, pending, challenger, ...).

Pure data and its MLflow tag form; the move itself is textloop.pipeline.registry.move_alias (the
only function that moves an alias), which first has a journal claim it (the loop database, the
authority on aliases, wired by the caller: this layer cannot import it), then writes it to the
registry (textloop.pipeline.registry.apply_move) and reports it applied.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

HISTORY_TAG = "alias_history"  # model-version tag: JSON list of the moves that touched it
MAX_TAG_CHARS = 100_000  # MLflow's limit on model-version tag values

Action = Literal["deploy", "pending", "approve", "reject", "force", "rollback"]
ACTIONS: tuple[str, ...] = ("deploy", "pending", "approve", "reject", "force", "rollback")


def utc_now() -> str:
    """An ISO-8601 UTC timestamp with microseconds (the `at` of a move; moves sort by it)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def os_user() -> str:
    """Who runs this process: the default `--user` of the manual commands."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


@dataclass(frozen=True)
class AliasMove:
    """One move of `alias` on `model_name`: from_version -> to_version (None: unset).

    `action` says what moved it (deploy: the gate; pending: the gate under manual approval;
    approve/reject/force/rollback: a person), `actor` who (`run <mlflow run id>` or a user name),
    `run_id` the MLflow run of an automatic move, `reason` why (the gate's reason, or the
    person's mandatory reason)."""

    model_name: str
    alias: str
    from_version: str | None
    to_version: str | None
    action: str
    reason: str
    actor: str
    run_id: str | None = None
    at: str = field(default_factory=utc_now)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AliasMove:
        """Back from a tag entry or a database row (unknown keys ignored)."""
        keys = cls.__dataclass_fields__
        return cls(**{k: (None if data.get(k) in (None, "") and k.endswith("version")
                          else data.get(k)) for k in keys if k in data})

    def line(self) -> str:
        """One human line: when, alias, from -> to, action, who, why."""
        src = f"v{self.from_version}" if self.from_version else "none"
        dst = f"v{self.to_version}" if self.to_version else "none"
        return (f"{self.at}  {self.alias}: {src} -> {dst}  {self.action} by {self.actor}: "
                f"{self.reason}")


class Journal(Protocol):
    """The authority on aliases (the loop database): a move is claimed there, compare-and-set
    in one transaction, before the registry is written, and marked applied after."""

    def claim(self, moves: Sequence[AliasMove]) -> None:
        """Record the moves as one decision, or raise (a concurrent decision won)."""

    def applied(self, moves: Sequence[AliasMove]) -> None:
        """The registry now agrees with the claimed moves."""


def appended_tag(existing: str | None, move: AliasMove, limit: int = MAX_TAG_CHARS) -> str:
    """The version's history tag with `move` appended; the oldest entries are dropped (never the
    new one) when the JSON would exceed MLflow's tag limit (the database keeps every move)."""
    entries = parse_tag(existing) + [move.to_dict()]
    text = json.dumps(entries, separators=(",", ":"))
    while len(text) > limit and len(entries) > 1:
        entries = entries[1:]
        text = json.dumps(entries, separators=(",", ":"))
    return text


def parse_tag(value: str | None) -> list[dict[str, Any]]:
    """The entries of a history tag ([] when absent or unreadable)."""
    if not value:
        return []
    try:
        entries = json.loads(value)
    except json.JSONDecodeError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def timeline(tag_values: Iterable[str | None]) -> list[AliasMove]:
    """Every move found in the history tags of a model's versions, each once (a move is on both
    versions it touched), oldest first."""
    seen: dict[str, AliasMove] = {}
    for value in tag_values:
        for entry in parse_tag(value):
            move = AliasMove.from_dict(entry)
            seen.setdefault(move.id, move)
    return sorted(seen.values(), key=lambda m: (m.at, m.id))


def rollback_target(moves: Iterable[AliasMove], alias: str, current: str | None,
                    alive: set[str] | None = None) -> str | None:
    """The version `rollback` moves `alias` back to by default: the most recent earlier holder
    that is not `current`, was not itself rolled back away from (so a second rollback keeps
    going back: v3 -> v2 -> v1, never v2 -> v3 again) and, given `alive` (the versions still
    in the registry), was not deleted. None when there is none."""
    ordered = sorted((m for m in moves if m.alias == alias), key=lambda m: (m.at, m.id))
    rolled_back: set[str] = set()
    for move in ordered:
        if move.action == "rollback" and move.from_version:
            rolled_back.add(move.from_version)
        elif move.to_version:  # placed again by the gate or a person: eligible again
            rolled_back.discard(move.to_version)
    for move in reversed(ordered):
        for version in (move.to_version, move.from_version):
            if (version and version != current and version not in rolled_back
                    and (alive is None or version in alive)):
                return version
    return None


def last_holder(moves: Iterable[AliasMove], alias: str) -> str | None:
    """The version the newest recorded move put in `alias` (None: it was last removed)."""
    ordered = sorted((m for m in moves if m.alias == alias), key=lambda m: (m.at, m.id))
    return ordered[-1].to_version if ordered else None
