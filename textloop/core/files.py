"""The one reader of a project's and its state's files (params.yaml, textloop.yaml, dvc.yaml,
dvc.lock, the JSON records under the state folder, the MLflow SQLite store): every OS, decode
and parse error, a git merge-conflict marker and a database held locked by another process
become one UserError line naming the file, the position and what to do."""

from __future__ import annotations

import copy
import functools
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from textloop.core.errors import UserError

_CONFLICT = re.compile(r"^(<{7}|={7}|>{7})(?: |$)", re.MULTILINE)  # git's merge markers


def read_text_file(path: Path, missing_ok: bool = False) -> str | None:
    """A project or state file's UTF-8 text (None when missing and missing_ok), refused with
    one line when it cannot be read, is not UTF-8 or still holds git merge-conflict markers."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise UserError(f"{path}: file not found (run `textloop init` to create a project, "
                        "or run from inside one)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}, byte {exc.start}: not UTF-8 (byte "
                        f"0x{data[exc.start]:02x}); save the file as UTF-8 and run again") from None
    conflict = _CONFLICT.search(text)
    if conflict:
        line = text.count("\n", 0, conflict.start()) + 1
        raise UserError(f"{path}: line {line}: git merge-conflict marker {conflict[1]!r}; "
                        "resolve the conflict (keep one side, e.g. `git checkout --theirs -- "
                        f"{path.name}`) and run again")
    return text


def read_yaml_file(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    """The mapping a project YAML file holds ({} for an empty file, or a missing one when
    missing_ok). YAML 1.2 rules: `off`, `yes`, `no` stay strings and an empty value is null,
    so a file rewritten by DVC's `-S` (which drops quotes) reads back as written."""
    text = read_text_file(path, missing_ok)
    return {} if text is None else copy.deepcopy(_parse(text, str(path)))


def read_json_file(path: Path, missing_ok: bool = True) -> Any:
    """The document a JSON state file holds (None when missing and missing_ok)."""
    text = read_text_file(path, missing_ok)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON "
                        f"({exc.msg}); restore or delete the file and run again") from None


def wait_for_sqlite(path: Path, wait_s: float) -> None:
    """Wait up to wait_s for another process's lock on a SQLite file to go (a read must be
    possible); then one line naming the file. A missing file is fine (it will be created)."""
    if not path.is_file():
        return
    try:
        conn = sqlite3.connect(path, timeout=wait_s)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise UserError(locked_message(path, wait_s)) from None
        raise UserError(f"{path}: cannot be read as a SQLite database ({exc}); restore it "
                        "from a backup") from None
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: not a SQLite database ({exc}); restore it from a backup") from None


def locked_message(path: Path, wait_s: float) -> str:
    """The one line for a database another process keeps locked."""
    return (f"{path}: the database is locked by another process (waited {wait_s:g} s, "
            "backend.db_lock_wait_s); let that process finish or stop it, then run again")


def parse_yaml_text(text: str, name: str) -> dict[str, Any]:
    """YAML text from elsewhere (a git revision of a file) read by the same rules; `name`
    says where it came from in an error."""
    return copy.deepcopy(_parse(text, name))


@functools.lru_cache(maxsize=32)
def _parse(text: str, name: str) -> dict[str, Any]:
    """Parsed once per exact text (a run reads params.yaml dozens of times; an edited file is a
    new text, so a stale value is never returned). Callers get a copy."""
    try:
        doc = YAML(typ="safe", pure=True).load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "not valid YAML"
        raise UserError(f"{name}: {where}{problem}; fix the YAML there and run again") from None
    except YAMLError as exc:
        raise UserError(f"{name}: not valid YAML ({exc}); fix it and run again") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError(f"{name}: line 1, column 1: expected a mapping of settings (key: value), "
                        f"found {type(doc).__name__}; fix the file and run again")
    return doc
