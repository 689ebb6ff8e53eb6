"""New SQLite databases of a library (Prefect's server, MLflow's tracking store) start as a copy
of an empty, migrated one kept per library version in the user's cache folder: a library's
migrations on a new file cost more CPU than the rest of a first run's use of that file."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def template_path(library: str) -> Path:
    """The template of `library`'s database for its installed version, in the user's cache
    folder ($XDG_CACHE_HOME, else ~/.cache)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "textloop" / f"{library}-{importlib.metadata.version(library)}.db"


def copy_template(template: Path, db: Path) -> None:
    """`db` (missing) becomes a copy of `template`, whole or not at all; a database another
    process made meanwhile is kept."""
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, tmp)
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.link(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def keep_template(db: Path, template: Path) -> None:
    """A consistent copy of the database `db` (SQLite's backup API: the write-ahead log
    included) written to `template` atomically; a cache that cannot be written is logged and
    skipped (the next new database is built again)."""
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(db)) as src, \
                contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
        os.replace(tmp, template)
    except (OSError, sqlite3.Error) as exc:
        log.warning("could not keep a template database in %s: %s", template, exc)
    finally:
        with contextlib.suppress(OSError):  # e.g. the cache path is a file: nothing was made
            tmp.unlink(missing_ok=True)


def usable(template: Path) -> bool:
    """Whether `template` opens as a SQLite database with tables that passes SQLite's quick
    check: a cache file can be truncated or overwritten, and a copy of a broken one would
    break every new project's first run."""
    try:
        with contextlib.closing(sqlite3.connect(f"{template.as_uri()}?mode=ro", uri=True)) as conn:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            return tables > 0 and conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    except sqlite3.Error:
        return False


def seed_from_template(db: Path, library: str, build: Callable[[Path], None]) -> None:
    """A missing `db` starts as a copy of `library`'s template. Without a usable template,
    `build` makes the empty migrated database at `db` itself, and a copy of it becomes the
    template (replacing a broken one).
    The library's own start-up check still upgrades whatever is behind."""
    if db.exists():
        return
    template = template_path(library)
    if template.is_file():
        if usable(template):
            copy_template(template, db)
            return
        log.warning("%s is not a usable database: building a new one in its place", template)
    db.parent.mkdir(parents=True, exist_ok=True)
    build(db)
    keep_template(db, template)
