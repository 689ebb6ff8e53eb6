"""Project root discovery and the environment that keeps all state inside the project."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from textloop.core.config import Params, load_params
from textloop.core.errors import UserError
from textloop.core.lock import HolderLock

PARAMS_FILE = "params.yaml"
WORKSPACE_LOCK = "workspace"  # <state>/locks/workspace.lock: one lifecycle run at a time
LOCKS_DIR = "locks"  # in the state folder: OS lock files + holder records
LAST_RUN_FILE = "last_run.json"  # in the state folder
WATERMARK_FILE = "feedback_watermark.json"  # in the state folder


@dataclass(frozen=True)
class Project:
    """A textloop project folder: dvc.yaml + params.yaml, with its state folder."""

    root: Path

    @property
    def params_path(self) -> Path:
        return self.root / PARAMS_FILE

    def params(self) -> Params:
        return load_params(self.params_path)

    def path(self, rel: str) -> Path:
        """Resolve a path declared in params.yaml against the project root."""
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    @property
    def state(self) -> Path:
        return self.path(self.params().paths.state)

    @property
    def last_run_path(self) -> Path:
        """The record of the latest lifecycle run (written by the flow, read by status)."""
        return self.state / LAST_RUN_FILE

    @property
    def watermark_path(self) -> Path:
        """Which feedback batches the latest training consumed."""
        return self.state / WATERMARK_FILE

    def lock_path(self, name: str) -> Path:
        """The lock file of a named lock (its holder record sits beside it)."""
        return self.state / LOCKS_DIR / f"{name}.lock"

    def workspace_lock(self, timeout_s: float | None = None) -> HolderLock:
        """The lock every lifecycle run holds while it touches the DVC workspace; a live holder
        is waited for timeout_s (default `run.lock_timeout_s`) seconds, a dead one not at all."""
        wait = self.params().run.lock_timeout_s if timeout_s is None else timeout_s
        return HolderLock(self.lock_path(WORKSPACE_LOCK), "workspace", wait)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.state / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.state / "mlartifacts").resolve()


def find_project(start: Path | None = None) -> Project:
    """Walk up from `start` (default: cwd or $TEXTLOOP_PROJECT) to the folder holding dvc.yaml."""
    env_root = os.environ.get("TEXTLOOP_PROJECT")
    here = Path(env_root) if env_root and start is None else (start or Path.cwd())
    here = here.resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / PARAMS_FILE).is_file():
            return Project(folder)
    raise UserError(f"{here}: not inside a textloop project (no dvc.yaml + params.yaml above it)")


def project_env(project: Project) -> dict[str, str]:
    """The environment that keeps Prefect, MLflow and DVC state inside the project, telemetry
    off, models offline (what `configure` sets; tests restore exactly these keys)."""
    state = project.state.resolve()
    return {
        "TEXTLOOP_PROJECT": str(project.root),
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "MLFLOW_TRACKING_URI": project.tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }


def configure(project: Project) -> dict[str, str]:
    """Point Prefect, MLflow and DVC at state inside the project; telemetry off. Idempotent."""
    state = project.state.resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    state.chmod(0o700)  # it holds served texts (serve.db), the API token and the MLflow DB
    env = project_env(project)
    os.environ.update(env)
    return env
