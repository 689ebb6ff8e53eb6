"""What the serving app needs to know, resolved once from the project (or built by tests)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from textloop.core.config import Params
from textloop.core.layout import Project, StateLayout
from textloop.loop.retrain_policy import policy_db_url
from textloop.pipeline.registry import served_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """Model to follow, request limits, database, auth token and where the loop's files are."""

    model_name: str
    db_url: str
    token: str
    params: Params
    project_root: Path | None = None
    state: Path | None = None

    @property
    def alias(self) -> str:
        """The registry alias the API follows."""
        return self.params.serve.alias

    def path(self, rel: str) -> Path | None:
        """A params.yaml path resolved against the project (None without a project)."""
        if self.project_root is None:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.project_root / p


def resolve_token(env_name: str, state: Path) -> str:
    """The bearer token: $<env_name> if set, else <state>/api-token (created once, mode 0600)."""
    value = os.environ.get(env_name, "").strip()
    if value:
        return value
    path = StateLayout(state).api_token
    if not path.is_file():
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
        log.info("generated an API token in %s", path)
    return path.read_text(encoding="utf-8").strip()


def token_hint(settings: ServeSettings) -> str:
    """Where a person finds the API token the pages ask for once per browser session: the
    environment variable when the server reads one, else the token file (resolve_token's
    order), named relative to the project as a user types it."""
    env = settings.params.serve.token_env
    if settings.state is None:
        return f"the token: ${env} of the server"
    path = StateLayout(settings.state).api_token
    root = settings.project_root
    if root is not None and path.resolve().is_relative_to(root.resolve()):
        path = path.resolve().relative_to(root.resolve())
    return f"the token: cat {path} (in the project), or ${env} if set"


def from_project(project: Project) -> ServeSettings:
    """Settings of `textloop serve` in a project: params.yaml + env + state folder."""
    params = project.params()
    state = project.state.resolve()
    return ServeSettings(model_name=served_model(project)[0],  # status and predict use it too
                         db_url=policy_db_url(project),
                         token=resolve_token(params.serve.token_env, state), params=params,
                         project_root=project.root, state=state)
