"""Shared fixtures (tiny synthetic frames and hostile files) and the tier markers of every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# a temporary Prefect server per `textloop run`, stopped with it: no test leaves a project server
# behind (tests/e2e/test_prefect_server.py starts and stops its own)
os.environ.setdefault("TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES", "0")


def raw_frame(rows: list[tuple]) -> pd.DataFrame:
    """Raw-schema rows from (text, label, confidence, source, role) tuples."""
    from tasks.ingest import RAW_COLUMNS

    df = pd.DataFrame(rows, columns=["text", "label", "confidence", "source", "role"])
    df["row_id"] = [f"r{i}" for i in range(len(df))]
    df["origin"] = [f"fixture:{i + 1}" for i in range(len(df))]
    df["rating"] = None
    df["encoding_fallback"] = False
    return df[RAW_COLUMNS]


@pytest.fixture
def make_raw():
    return raw_frame


def _hypothesis_profile() -> None:
    """Property tests are reproducible in CI (derandomized) and never fail on slow machines."""
    from hypothesis import settings

    settings.register_profile("textloop", derandomize=True, deadline=None)
    settings.load_profile("textloop")


_hypothesis_profile()


def _restore_environment(saved: dict[str, str]) -> None:
    """os.environ back to `saved`, and MLflow's process-global URIs unset (its setters export
    $MLFLOW_TRACKING_URI / $MLFLOW_REGISTRY_URI, and `set_registry_uri(None)` leaves the variable)."""
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="module")
def _module_environment_restored():
    """The same for a module-scoped fixture (set up before any test's own guard saves the
    environment): what it points MLflow or Prefect at ends with its module, so a later module in
    the same xdist worker, or a subprocess it starts, never follows that module's store."""
    saved = dict(os.environ)
    yield
    _restore_environment(saved)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Whatever a test (or the CLI it drives in-process: `configure()`) sets in os.environ, and
    MLflow's tracking/registry URIs, are undone after it, so no later test (nor a service it
    starts) follows another test's project or MLflow store."""
    saved = dict(os.environ)
    yield
    _restore_environment(saved)


@pytest.fixture(autouse=True)
def _no_mlflow_state_between_tests():
    """A test that calls mlflow.set_experiment leaves the process's active experiment set, and
    a later test in the same xdist worker (modules share one with --dist loadscope) that resumes
    a run of another experiment (`start_run(run_id=...)`) is then refused by MLflow. Reset the
    fluent API's process state after every test (only when MLflow was imported)."""
    yield
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is None:
        return
    while fluent.active_run() is not None:
        fluent.end_run()
    fluent._active_experiment_id = None  # no public "unset"; set_experiment writes only this


TIERS = ("unit", "data", "model", "e2e")  # the folders under tests/, one marker each


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m unit` sees the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test's tier is the folder its file lives in: that folder's marker is added, so `-m unit`
    (or data, model, e2e) selects a tier without a decorator in any file. A test module directly
    under tests/ has no tier and is refused."""
    here = Path(__file__).resolve().parent
    for item in items:
        try:
            parts = item.path.resolve().relative_to(here).parts
        except ValueError:  # collected outside tests/
            continue
        if parts[0] not in TIERS:
            raise pytest.UsageError(f"{item.path}: a test module belongs in one of tests/"
                                    f"{{{','.join(TIERS)}}}/")
        item.add_marker(parts[0])
    items[:] = costliest_scopes_first(items)


# the costlier tier first; within e2e, the fewer a module's tests the longer each one (a module
# of one test is one whole scenario: servers, two lifecycle runs)
TIER_COST_ORDER = ("e2e", "model", "data", "unit")


def costliest_scopes_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """Modules in the order xdist should hand them out (pyproject: `--dist loadscope
    --no-loadscope-reorder`, a module is one unit of work): the long ones first, so the many
    short ones fill the other worker meanwhile and none of them is left alone at the end. A
    module's tests keep their order."""
    modules: dict[Path, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)

    def cost(path: Path) -> tuple[int, int]:
        tier = next((t for t in TIER_COST_ORDER if t in path.parts), None)
        rank = TIER_COST_ORDER.index(tier) if tier else len(TIER_COST_ORDER)
        return rank, len(modules[path]) if tier == "e2e" else 0

    return [item for path in sorted(modules, key=cost) for item in modules[path]]
