"""The backend profile: where MLflow, Prefect, the prediction log and S3 live (textloop.yaml `backend`).

`local` is the single-user set-up (SQLite + files under the state folder). `team` resolves every
endpoint here, once: a configured URL wins; a null one is the service `textloop up --profile team`
starts on 127.0.0.1 (its ports recorded in <state>/team.json). Secrets never come from
params.yaml: PGPASSWORD, AWS keys and the API token come from the environment or from the
dotenv-style file named by $TEXTLOOP_SECRETS_FILE (outside the project), the environment winning.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from textloop.core.config import BackendConfig
from textloop.core.errors import UserError
from textloop.core.lock import SharedLock

SECRETS_ENV = "TEXTLOOP_SECRETS_FILE"
LOCAL_HOST = "127.0.0.1"
LOCAL_USER = "textloop"  # role of the private cluster
LOCAL_BUCKET = "textloop"
DEFAULT_PORTS = {"postgres": 55432, "s3": 9000, "mlflow": 5000, "prefect": 4200}
DATABASES = {"log": "textloop", "mlflow": "mlflow", "prefect": "prefect"}


@dataclass(frozen=True)
class Endpoints:
    """The resolved team endpoints (no secrets). db_url: the prediction log (psycopg);
    mlflow_db / prefect_db: the servers' stores on the same PostgreSQL server."""

    mlflow_url: str
    prefect_api_url: str
    db_url: str
    mlflow_db: str
    prefect_db: str
    s3_endpoint_url: str | None
    artifact_root: str
    dvc_remote: str


def read_secrets(project_root: Path) -> dict[str, str]:
    """KEY=value pairs of $TEXTLOOP_SECRETS_FILE (dotenv syntax); {} when unset. Raises
    UserError when the file is missing or lies inside the project (it would end up in git)."""
    name = os.environ.get(SECRETS_ENV, "").strip()
    if not name:
        return {}
    from dotenv import dotenv_values

    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{path}: ${SECRETS_ENV} names no readable file")
    if path.is_relative_to(project_root.resolve()):
        raise UserError(f"{path}: the secrets file must live outside the project (git); "
                        f"move it and point ${SECRETS_ENV} at it")
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def secrets_env(project_root: Path) -> dict[str, str]:
    """The secrets file's keys that the environment does not set already (the environment wins)."""
    return {k: v for k, v in read_secrets(project_root).items() if k not in os.environ}


def local_password(state: Path) -> str:
    """The private cluster's password: <state>/pg-password, created once (mode 0600)."""
    path = state / "pg-password"
    if not path.is_file():
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
    return path.read_text(encoding="utf-8").strip()


def team_record(state: Path) -> dict:
    """What `up --profile team` recorded: ports of the services it started ({} before)."""
    path = state / "team.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_team_record(state: Path, ports: dict[str, int], endpoints: Endpoints) -> None:
    """Record the ports and resolved endpoints of a team `up` (no secrets in it)."""
    (state / "team.json").write_text(json.dumps({"ports": ports, **asdict(endpoints)}, indent=2))


def _database(url: str, name: str, driver: str) -> str:
    """The same server as `url`, another database and driver."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername=driver, database=name).render_as_string(
        hide_password=False)


def endpoints(cfg: BackendConfig, state: Path, ports: dict[str, int] | None = None) -> Endpoints:
    """Every team endpoint: configured URLs win, nulls are the local services (`ports`, else
    those recorded by the last `up`, else DEFAULT_PORTS)."""
    p = {**DEFAULT_PORTS, **team_record(state).get("ports", {}), **(ports or {})}
    local = f"http://{LOCAL_HOST}"
    db = cfg.db_url or (f"postgresql+psycopg://{LOCAL_USER}@{LOCAL_HOST}:{p['postgres']}/"
                        f"{DATABASES['log']}")
    own_s3 = cfg.artifact_root is None and cfg.s3_endpoint_url is None
    return Endpoints(
        mlflow_url=cfg.mlflow_url or f"{local}:{p['mlflow']}",
        prefect_api_url=cfg.prefect_api_url or f"{local}:{p['prefect']}/api",
        db_url=db,
        mlflow_db=_database(db, DATABASES["mlflow"], "postgresql+psycopg"),
        prefect_db=_database(db, DATABASES["prefect"], "postgresql+asyncpg"),
        s3_endpoint_url=cfg.s3_endpoint_url or (f"{local}:{p['s3']}" if own_s3 else None),
        artifact_root=cfg.artifact_root or f"s3://{LOCAL_BUCKET}/mlartifacts",
        dvc_remote=cfg.dvc_remote or f"s3://{LOCAL_BUCKET}/dvc",
    )


def starts_locally(cfg: BackendConfig) -> dict[str, bool]:
    """Which team services `up --profile team` starts itself (their endpoint is null)."""
    return {"postgres": cfg.db_url is None,
            "s3": cfg.artifact_root is None and cfg.s3_endpoint_url is None,
            "mlflow": cfg.mlflow_url is None, "prefect": cfg.prefect_api_url is None}


def team_env(cfg: BackendConfig, state: Path) -> dict[str, str]:
    """Client environment of the team profile: only server URLs (+ the local cluster's password
    when we run it and none is set)."""
    ep = endpoints(cfg, state)
    env = {"MLFLOW_TRACKING_URI": ep.mlflow_url, "MLFLOW_REGISTRY_URI": ep.mlflow_url,
           "PREFECT_API_URL": ep.prefect_api_url}
    if cfg.db_url is None:  # our private cluster: its own password, whatever else is set
        env["PGPASSWORD"] = local_password(state)
    return env


def team_log_url(cfg: BackendConfig, state: Path) -> str | None:
    """The team prediction log (PostgreSQL); None on the local profile (SQLite default)."""
    return endpoints(cfg, state).db_url if cfg.profile == "team" else None


def libpq(url: str, database: str | None = None) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq URL (psycopg.connect), optionally another database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def shared_lock(cfg: BackendConfig, state: Path, name: str) -> SharedLock | None:
    """Team profile: the cross-machine half of a named lock, a PostgreSQL advisory lock on the
    team database (one per lock name and project: the DVC remote names the project's data);
    None on the local profile (the OS lock alone, as before)."""
    if cfg.profile != "team":
        return None
    ep = endpoints(cfg, state)
    return SharedLock(libpq(ep.db_url), f"textloop:{name}:{ep.dvc_remote}")
