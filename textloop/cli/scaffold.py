"""Create a new textloop project folder from this one's pipeline definition (`textloop init`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from textloop.core.errors import UserError

TEMPLATE_FILES = ("dvc.yaml", "params.yaml", "scripts/stage.sh", ".dvcignore", ".dvc/config",
                  ".dvc/.gitignore", "data/.gitignore", ".gitignore")
GIT = ["git", "-c", "user.name=textloop", "-c", "user.email=textloop@localhost"]


def init_project(template: Path, dest: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Copy the pipeline files into `dest`, apply params overrides, record this interpreter for
    the stage commands (the code stays in site-packages), and make it a git repo with one
    commit (DVC experiments need one)."""
    from textloop.core.config import apply_overrides
    from textloop.core.layout import Project
    from textloop.pipeline.dag import record_interpreter

    if (dest / "dvc.yaml").exists():
        raise UserError(f"{dest}: already a textloop project")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in TEMPLATE_FILES:
        if (template / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(template / rel, dest / rel)
    apply_overrides(dest / "params.yaml", overrides or {})
    record_interpreter(Project(dest))
    if not (dest / ".git").exists():
        subprocess.run([*GIT, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", "textloop init", "--allow-empty"], cwd=dest, check=True)
    return dest
