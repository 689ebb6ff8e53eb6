"""Build, at set-up time, the empty migrated databases that a project's first run would
otherwise build itself (textloop.core.db_template): Prefect's ~115 migrations and MLflow's
then cost `scripts/setup.sh` its few CPU seconds, not the newcomer's first `textloop run`.
Run as `python -m textloop.cli.prepare_cache`; a usable template already there is kept (a
broken one is built again: textloop.core.db_template.usable)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from textloop.core.db_template import seed_from_template, template_path
from textloop.core.layout import TELEMETRY_OFF

log = logging.getLogger(__name__)

# Prefect migrates the database its settings name: a child process whose PREFECT_HOME and
# working folder are a scratch folder (no configured connection URL, no prefect.toml or
# .env of the folder setup runs in) builds the template there
_PREFECT_CHILD = "from textloop.cli.prefect_server import seed_database; seed_database()"
_PREFECT_URL_VARS = ("PREFECT_API_DATABASE_CONNECTION_URL",
                     "PREFECT_SERVER_DATABASE_CONNECTION_URL")
QUIET = {**TELEMETRY_OFF, "PREFECT_LOGGING_LEVEL": "WARNING", "MLFLOW_LOGGING_LEVEL": "WARNING"}


def build_templates() -> dict[str, Path]:
    """The Prefect and MLflow template databases for the installed versions, built in a
    scratch folder when missing: library -> template path. Raises CalledProcessError when
    Prefect's migrations fail (its stderr is passed through)."""
    from textloop.pipeline.tracking import empty_store

    with tempfile.TemporaryDirectory(prefix="textloop-cache-") as scratch:
        seed_from_template(Path(scratch) / "mlflow.db", "mlflow", empty_store)
        env = {k: v for k, v in os.environ.items() if k not in _PREFECT_URL_VARS}
        env.update(PREFECT_HOME=str(Path(scratch) / "prefect"))
        subprocess.run([sys.executable, "-c", _PREFECT_CHILD], env=env, cwd=scratch,
                       check=True, stdout=subprocess.DEVNULL)
    return {library: template_path(library) for library in ("prefect", "mlflow")}


def main() -> int:
    """Build the templates; print where they are (one line)."""
    for key, value in QUIET.items():  # telemetry off, libraries quiet, unless set otherwise
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    paths = build_templates()
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        log.error("template databases not written: %s", ", ".join(missing))
        return 1
    print(f"empty Prefect and MLflow databases ready in {paths['prefect'].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
