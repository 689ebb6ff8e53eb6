"""Create a new textloop project folder from the pipeline template (`textloop init`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from textloop.core.errors import UserError

TEMPLATE_DIR = Path(__file__).resolve().parent / "template"
# project file -> its name in the packaged template (no dotfiles, no live dvc.yaml in the package)
TEMPLATE_FILES = {".dvcignore": "dvcignore", ".dvc/config": "dvc_config",
                  ".dvc/.gitignore": "dvc_gitignore", "data/.gitignore": "data_gitignore",
                  ".gitignore": "gitignore", "scripts/stage.sh": "stage_sh",
                  "tests_behaviour.yaml": "tests_behaviour_yaml"}
# generated from the declaration (textloop.core.catalog), never stored as copies
GENERATED_FILES = ("dvc.yaml", "params.yaml", "textloop.yaml")
PROJECT_FILES = (*GENERATED_FILES, *TEMPLATE_FILES)
GIT = ["git", "-c", "user.name=textloop", "-c", "user.email=textloop@localhost"]


def generated_files() -> dict[str, str]:
    """The project files rendered from the declaration: dvc.yaml with the catalog's paths,
    params.yaml (ML choices), textloop.yaml (operational settings)."""
    from textloop.core.catalog import render_dvc_yaml, render_params_yaml, render_settings_yaml

    return {"dvc.yaml": render_dvc_yaml(), "params.yaml": render_params_yaml(),
            "textloop.yaml": render_settings_yaml()}


def template_contents(template: Path | None = None) -> dict[str, bytes]:
    """Project-relative path -> bytes: the generated files and the packaged template, or
    another project's files (those it has)."""
    if template is None:
        out = {rel: text.encode("utf-8") for rel, text in generated_files().items()}
        return {**out, **{rel: (TEMPLATE_DIR / stored).read_bytes()
                          for rel, stored in TEMPLATE_FILES.items()}}
    return {rel: (template / rel).read_bytes() for rel in PROJECT_FILES
            if (template / rel).is_file()}


def _write_files(dest: Path, contents: dict[str, bytes]) -> None:
    """Write each file of `contents` under dest, making its folders."""
    for rel, data in contents.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)


def init_project(template: Path | None, dest: Path,
                 overrides: dict[str, Any] | None = None) -> Path:
    """Write the pipeline files (template None: generated from the declaration plus the ones
    shipped in the package; else another project's) into `dest`, apply settings overrides
    (validated first: a bad one leaves no files behind), and make it a git repo with one
    commit (DVC experiments need one); the dep folders no stage writes exist from the start, so
    `dvc exp run -S` works as the first command. Raises UserError if `dest` is already a project."""
    import tempfile

    from textloop.core.config import apply_overrides
    from textloop.core.layout import Project
    from textloop.pipeline.dag import prepare_workspace, record_interpreter

    if (dest / "dvc.yaml").exists():
        raise UserError(f"{dest}: already a textloop project")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest}: exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise UserError(f"{dest}: folder is not empty (its files would be committed with the "
                        "project); choose a new or empty folder")
    contents = template_contents(template)
    settings = {rel: data for rel, data in contents.items() if rel.endswith(".yaml")}
    with tempfile.TemporaryDirectory() as tmp:
        _write_files(Path(tmp), settings)
        apply_overrides(Path(tmp) / "params.yaml", overrides or {}, write=False)
    dest.mkdir(parents=True, exist_ok=True)
    _write_files(dest, contents)
    apply_overrides(dest / "params.yaml", overrides or {})
    record_interpreter(Project(dest))
    prepare_workspace(Project(dest))  # dvc status / dvc exp run -S work before any run
    if not (dest / ".git").exists():
        subprocess.run([*GIT, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", "textloop init", "--allow-empty"], cwd=dest, check=True)
    return dest
