"""The one reader of a project's YAML files (params.yaml, textloop.yaml): every OS, decode and
parse error becomes one UserError line naming the file, the position and what to do."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from textloop.core.errors import UserError


def read_yaml_file(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    """The mapping a project YAML file holds ({} for an empty file, or a missing one when
    missing_ok). YAML 1.2 rules: `off`, `yes`, `no` stay strings and an empty value is null,
    so a file rewritten by DVC's `-S` (which drops quotes) reads back as written."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return {}
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
    return copy.deepcopy(_parse(text, str(path)))


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
