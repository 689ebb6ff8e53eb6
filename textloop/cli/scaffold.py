"""Create a new textloop project folder from the pipeline template (`textloop init`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from textloop.core.errors import UserError

TEMPLATE_DIR = Path(__file__).resolve().parent / "template"
# project file -> its name in the packaged template (no dotfiles, no live dvc.yaml in the package)
TEMPLATE_FILES = {"dvc.yaml": "dvc_yaml", "params.yaml": "params.yaml", ".dvcignore": "dvcignore",
                  ".dvc/config": "dvc_config", ".dvc/.gitignore": "dvc_gitignore",
                  "data/.gitignore": "data_gitignore", ".gitignore": "gitignore",
                  "scripts/stage.sh": "stage_sh", "tests_behaviour.yaml": "tests_behaviour_yaml"}
GIT = ["git", "-c", "user.name=textloop", "-c", "user.email=textloop@localhost"]


def template_sources(template: Path | None = None) -> dict[str, Path]:
    """Project-relative path -> file to copy: the packaged template, or another project's files."""
    if template is None:
        return {rel: TEMPLATE_DIR / stored for rel, stored in TEMPLATE_FILES.items()}
    return {rel: template / rel for rel in TEMPLATE_FILES}


def init_project(template: Path | None, dest: Path,
                 overrides: dict[str, Any] | None = None) -> Path:
    """Copy the pipeline files (template None: the ones shipped in the package) into `dest`,
    apply params overrides (validated first: a bad one leaves no files behind), and make it a
    git repo with one commit (DVC experiments need one). Raises UserError if `dest` is already
    a project."""
    from textloop.core.config import apply_overrides
    from textloop.core.layout import Project
    from textloop.pipeline.dag import record_interpreter

    if (dest / "dvc.yaml").exists():
        raise UserError(f"{dest}: already a textloop project")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest}: exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise UserError(f"{dest}: folder is not empty (its files would be committed with the "
                        "project); choose a new or empty folder")
    sources = template_sources(template)
    apply_overrides(sources["params.yaml"], overrides or {}, write=False)
    dest.mkdir(parents=True, exist_ok=True)
    for rel, src in sources.items():
        if src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / rel)
    apply_overrides(dest / "params.yaml", overrides or {})
    record_interpreter(Project(dest))
    if not (dest / ".git").exists():
        subprocess.run([*GIT, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", "textloop init", "--allow-empty"], cwd=dest, check=True)
    return dest
