"""What a run changed in params.yaml: the working file against the committed one."""

from __future__ import annotations

import logging
import subprocess
from typing import Any

from textloop.core.config import effective_ml_settings
from textloop.core.files import parse_yaml_text, read_yaml_file
from textloop.core.layout import PARAMS_FILE, Project

log = logging.getLogger(__name__)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys -> leaf values (lists and empty mappings are leaves)."""
    if not isinstance(tree, dict) or (not tree and prefix):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def committed_params(project: Project) -> dict[str, Any] | None:
    """params.yaml as of git HEAD (None outside git, before the first commit, or untracked)."""
    proc = subprocess.run(["git", "show", f"HEAD:./{PARAMS_FILE}"], cwd=project.root,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log.info("no committed %s to compare with: %s", PARAMS_FILE, proc.stderr.strip())
        return None
    return parse_yaml_text(proc.stdout, f"HEAD:{PARAMS_FILE}")


def params_diff(project: Project) -> dict[str, tuple[Any, Any]]:
    """Every effective params value that differs from the committed params.yaml, as
    {dotted.key: (committed, working)}: both sides have the declared defaults filled in, so a
    key one file leaves out compares as its default (never as null). Earlier `--set` edits stay
    in params.yaml (as with `dvc exp run -S`), so they are listed too. Empty when there is no
    committed file to compare with."""
    old = committed_params(project)
    if old is None:
        return {}
    new = read_yaml_file(project.params_path)
    before, after = effective_ml_settings(old or {}), effective_ml_settings(new or {})
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)}
