"""A project folder that was moved or copied keeps its MLflow store working.

MLflow's SQLite store records absolute `file://` artifact locations (experiments, runs,
logged models, registered versions). After `mv proj elsewhere` every model load fails with
"No such artifact"; after `cp -r proj copy` the copy silently reads, and writes new runs into,
the original's artifact folder. The project's own artifact folder is known (the state layout),
so a store whose locations point into another folder's state folder (`<root>/.textloop/...`) is
rewritten to point into this project's, in one transaction, before anything reads it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

# every column of MLflow's SQLite schema holding an artifact location (a URI or a path)
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "source"),
                    ("model_versions", "storage_location"))


def _columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """The location columns this store's schema has (older MLflow versions lack some)."""
    have = []
    for table, column in LOCATION_COLUMNS:
        names = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column in names:
            have.append((table, column))
    return have


def foreign_roots(conn: sqlite3.Connection, state_uri: str, root_uri: str) -> set[str]:
    """State folders named in the store that are not this project's: each stored location's
    part up to the tail (`/.textloop`) this project's state folder has below its root."""
    tail = state_uri[len(root_uri):]
    found: set[str] = set()
    for table, column in _columns(conn):
        for (value,) in conn.execute(f"SELECT DISTINCT {column} FROM {table} "
                                     f"WHERE instr({column}, ?) > 0", (tail + "/",)):
            old = value[:value.index(tail + "/") + len(tail)]
            if old != state_uri and old.startswith("file://"):
                found.add(old)
    return found


def adopt_moved_store(db: Path, state: Path, root: Path) -> dict[str, str]:
    """Rewrite artifact locations inside another folder's state folder to the same place in
    `state` (this project's); returns {old state URI: new} (empty when the store is already
    this project's or does not exist yet)."""
    if not db.is_file():
        return {}
    new, root_uri = state.as_uri(), root.as_uri()
    if not new.startswith(root_uri + "/"):
        return {}  # the state folder lies outside the project: nothing to infer
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            moved = {old: new for old in foreign_roots(conn, new, root_uri)}
            for old in moved:
                for table, column in _columns(conn):
                    conn.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                 f"WHERE substr({column}, 1, ?) = ?",
                                 (new, len(old) + 1, len(old) + 1, old + "/"))
    finally:
        conn.close()
    for old in moved:
        log.warning("this project was moved or copied from %s: its MLflow store now points at "
                    "%s", old, new)
    return moved
