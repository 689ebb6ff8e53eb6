"""Project root discovery and the environment that keeps all state inside the project."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from textloop.core.backend import endpoints, secrets_env, shared_lock, team_env
from textloop.core.config import PARAMS_FILE, SETTINGS_FILE, Params, load_params
from textloop.core.errors import UserError
from textloop.core.lock import HolderLock

WORKSPACE_LOCK = "workspace"  # <state>/locks/workspace.lock: one lifecycle run at a time


@dataclass(frozen=True)
class StateLayout:
    """Every file and folder textloop keeps in a project's state folder (`paths.state`), named
    once here: what is not a DVC output (databases, records, locks, logs, pidfiles)."""

    root: Path

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        """MLflow artifact root (runs, registered models, monitor reports)."""
        return self.root / "mlartifacts"

    @property
    def serve_db(self) -> Path:
        """The default prediction/feedback log (SQLite) when serve.db_url is null."""
        return self.root / "serve.db"

    @property
    def api_token(self) -> Path:
        return self.root / "api-token"

    @property
    def last_run(self) -> Path:
        """The record of the latest lifecycle run (written at start and at the end)."""
        return self.root / "last_run.json"

    @property
    def watermark(self) -> Path:
        """Which feedback batches the latest training consumed."""
        return self.root / "feedback_watermark.json"

    @property
    def monitor(self) -> Path:
        """Monitor reports (one folder each) and the retrain decisions journal."""
        return self.root / "monitor"

    @property
    def decisions_journal(self) -> Path:
        return self.monitor / "decisions.jsonl"

    @property
    def pids(self) -> Path:
        """One JSON record per service started by `textloop up`."""
        return self.root / "run"

    @property
    def stage_runs(self) -> Path:
        """The MLflow runs a lifecycle run's stage processes recorded for its flow to log (one
        folder per run, removed when its stages are done)."""
        return self.pids / "stage-runs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def prefect_server(self) -> Path:
        """The record of the project Prefect server `textloop run` keeps between runs (pid,
        port, start time, versions); its pidfile, like those of `textloop up`'s services."""
        return self.pids / "prefect-server.json"

    @property
    def prefect_server_log(self) -> Path:
        return self.logs / "prefect-server.log"

    @property
    def stage_forks_log(self) -> Path:
        """What the stage fork server (textloop.stage_forks) itself wrote, if anything."""
        return self.logs / "stage-forks.log"

    @property
    def prefect_server_users(self) -> Path:
        """Every run using the project Prefect server holds a shared OS lock on this file (and
        touches it): the server stops itself only when nobody holds it and it is old enough."""
        return self.root / "locks" / "prefect-server.users"

    def lock(self, name: str) -> Path:
        """The OS lock file of a named lock (its holder record sits beside it)."""
        return self.root / "locks" / f"{name}.lock"


@dataclass(frozen=True)
class Project:
    """A textloop project folder: dvc.yaml + params.yaml, with its state folder."""

    root: Path

    @property
    def params_path(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def settings_path(self) -> Path:
        """textloop.yaml: the operational settings (DVC does not track them)."""
        return self.root / SETTINGS_FILE

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
    def layout(self) -> StateLayout:
        """The state folder's files (absolute)."""
        return StateLayout(self.state.resolve())

    @property
    def last_run_path(self) -> Path:
        """The record of the latest lifecycle run (written by the flow, read by status)."""
        return self.layout.last_run

    @property
    def watermark_path(self) -> Path:
        """Which feedback batches the latest training consumed."""
        return self.layout.watermark

    def lock_path(self, name: str) -> Path:
        """The lock file of a named lock (its holder record sits beside it)."""
        return self.layout.lock(name)

    def workspace_lock(self, timeout_s: float | None = None) -> HolderLock:
        """The lock every lifecycle run holds while it touches the DVC workspace; a live holder
        is waited for timeout_s (default `run.lock_timeout_s`) seconds, a dead one not at all."""
        wait = self.params().run.lock_timeout_s if timeout_s is None else timeout_s
        return HolderLock(self.lock_path(WORKSPACE_LOCK), "workspace", wait,
                          shared=shared_lock(self.params().backend, self.layout.root,
                                             WORKSPACE_LOCK))

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking + registry: the team server (textloop.yaml backend), else the SQLite file."""
        backend = self.params().backend
        if backend.profile == "team":
            return endpoints(backend, self.layout.root).mlflow_url
        return f"sqlite:///{self.layout.mlflow_db}"

    @property
    def artifact_root(self) -> Path:
        return self.layout.artifacts

    def experiment_artifacts(self, sub: str = "") -> str | None:
        """Where a new MLflow experiment keeps its artifacts: a folder of the project (local),
        or None on the team profile (the tracking server stores them in S3; clients only know
        its URL)."""
        if self.params().backend.profile == "team":
            return None
        folder = self.artifact_root / sub if sub else self.artifact_root
        folder.mkdir(parents=True, exist_ok=True)
        return folder.as_uri()


def find_project(start: Path | None = None) -> Project:
    """Walk up from `start` (default: cwd or $TEXTLOOP_PROJECT) to the folder holding dvc.yaml."""
    env_root = os.environ.get("TEXTLOOP_PROJECT")
    here = Path(env_root) if env_root and start is None else (start or Path.cwd())
    here = here.resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / PARAMS_FILE).is_file():
            return Project(folder)
    raise UserError(f"{here}: not inside a textloop project (no dvc.yaml + params.yaml above it)")


# Prefect's, MLflow's and DVC's usage reporting off, wherever textloop runs them
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1"}


def project_env(project: Project) -> dict[str, str]:
    """The environment that keeps Prefect, MLflow and DVC state inside the project, telemetry
    off, models offline (what `configure` sets; tests restore exactly these keys). The team
    profile points MLflow and Prefect at its servers instead (textloop.core.backend)."""
    env = {
        "TEXTLOOP_PROJECT": str(project.root),
        "PREFECT_HOME": str(project.layout.prefect_home),
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "MLFLOW_TRACKING_URI": project.tracking_uri,
        "MLFLOW_REGISTRY_URI": project.tracking_uri,  # the registry is the project's store too
        **TELEMETRY_OFF,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    backend = project.params().backend
    env.update(secrets_env(project.root))  # $TEXTLOOP_SECRETS_FILE; the environment wins
    if backend.profile == "team":  # clients only know the servers' URLs
        env.update(team_env(backend, project.layout.root))
    return env


def configure(project: Project) -> dict[str, str]:
    """Point Prefect, MLflow and DVC at state inside the project; telemetry off. Idempotent."""
    state = project.state.resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    state.chmod(0o700)  # it holds served texts (serve.db), the API token and the MLflow DB
    env = project_env(project)
    os.environ.update(env)
    return env
