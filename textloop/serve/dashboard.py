"""The dashboard: champion and versions, live accuracy and drift, feedback counts, lifecycle runs,
and a Retrain button that starts the lifecycle deployment through the retrain policy."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from textloop.core.config import Params
from textloop.loop import db
from textloop.loop import prefect_api as orchestration
from textloop.serve import charts
from textloop.serve.page_templates import templates

log = logging.getLogger(__name__)


class RetrainRequest(BaseModel):
    """The dashboard form: params.yaml overrides for this run (dotted keys)."""

    model_config = ConfigDict(extra="forbid")
    overrides: dict[str, Any] = Field(default_factory=dict, max_length=50)


def validate_overrides(params: Params, overrides: dict[str, Any]) -> dict[str, Any]:
    """Reject overrides params.yaml would reject, before a run is started (422)."""
    raw = params.model_dump(mode="json")
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise HTTPException(422, f"unknown parameter {key!r}")
            node = node[part]
        if leaf not in node:
            raise HTTPException(422, f"unknown parameter {key!r}")
        node[leaf] = value
    try:
        Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HTTPException(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    return overrides


def gate_score(tags: dict[str, str]) -> tuple[str, float | None]:
    """(metric name, test score) of a registered version from its tags."""
    metric = tags.get("gate_metric", "accuracy")
    try:
        return metric, float(metric)  # a value instead of a name: older tag layout
    except ValueError:
        pass
    value = tags.get(f"test_{metric}")
    return metric, float(value) if value not in (None, "") else None


def registry_versions(name: str) -> list[dict[str, Any]]:
    """Registered versions of the model, oldest first, with aliases and gate scores."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from textloop.pipeline.tracking import filter_literal

    client = MlflowClient()
    try:
        found = client.search_model_versions(f"name={filter_literal(name)}")
        aliases = client.get_registered_model(name).aliases  # search results omit aliases
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    out = []
    for v in sorted(found, key=lambda v: int(v.version)):
        metric, score = gate_score(dict(v.tags or {}))
        out.append({"version": str(v.version), "aliases": by_version.get(str(v.version), []),
                    "metric": metric, "score": score, "tags": dict(v.tags or {}),
                    "created": dt.datetime.fromtimestamp(v.creation_timestamp / 1000,
                                                         dt.UTC).strftime("%Y-%m-%d %H:%M")})
    return out


def table_rows(path: Path | None) -> int | None:
    """Rows of a CSV (labeling queue) or of all Parquet batches in a folder (feedback store)."""
    if path is None or not path.exists():
        return None
    if path.is_dir():
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in path.glob("*.parquet"))
    with path.open("rb") as fh:
        return max(sum(1 for _ in fh) - 1, 0)


def lifecycle_runs(deployment: str, limit: int = 10) -> tuple[list[dict[str, Any]], str | None]:
    """Recent lifecycle runs from the Prefect API, or the reason they cannot be shown."""
    if not orchestration.api_configured():
        return [], "Prefect API not configured (start it with `textloop up`)"
    try:
        return orchestration.recent_runs(orchestration.flow_name(deployment), limit), None
    except (httpx.HTTPError, OSError, RuntimeError) as exc:  # render even when Prefect is down
        log.warning("could not read lifecycle runs: %s", exc)
        return [], f"Prefect API unreachable: {type(exc).__name__}"


def version_chart(versions: list[dict[str, Any]], served: str | None) -> str:
    """The gate metric across registered versions, the served one circled."""
    if not versions:
        return charts.empty_chart("no registered versions yet")
    idx = next((i for i, v in enumerate(versions) if v["version"] == served), None)
    return charts.line_chart([f"v{v['version']}" for v in versions],
                             {versions[-1]["metric"]: [v["score"] for v in versions]},
                             f"test {versions[-1]['metric']} by version", highlight=idx)


NO_LIVE_ACCURACY = ('<p id="no-live-accuracy" class="muted">No live accuracy yet: no report had '
                    'a served prediction with feedback. Send feedback (POST /feedback, or label '
                    'texts on /label) and the next monitor report measures it.</p>')


def monitor_charts(reports: list[dict[str, Any]]) -> dict[str, str]:
    """Live accuracy and drift metrics over the monitor reports (none without reports: the
    first screen says so, once)."""
    if not reports:
        return {}
    x = [r["created_at"].strftime("%m-%d %H:%M") for r in reports]
    live = [r["live_accuracy"] for r in reports]
    return {"accuracy": charts.line_chart(x, {"live accuracy": live},
                                          "live accuracy (labeled predictions)")
            if any(v is not None for v in live) else NO_LIVE_ACCURACY,
            "drift": charts.line_chart(x, {"class-mix PSI": [r["class_psi"] for r in reports],
                                           "OOV increase": [r["oov_increase"] for r in reports]},
                                       "drift")}


def context(app: FastAPI) -> dict[str, Any]:
    """Everything the dashboard template shows."""
    from textloop.core.config import where_set
    from textloop.serve.champion import model_info
    from textloop.serve.controls import recent_deliveries
    from textloop.serve.label_pages import label_panel
    from textloop.serve.settings import token_hint
    from textloop.serve.shadow_scoring import shadow_status

    settings, engine = app.state.settings, app.state.engine
    served = model_info(app.state.watcher)
    versions = registry_versions(settings.model_name)
    reports = db.recent_rows(engine, db.monitor_reports, 50)
    runs, runs_error = lifecycle_runs(settings.params.retrain.deployment)
    p = settings.params.paths
    counts = {**db.counts(engine), "label_queue": table_rows(settings.path(p.label_queue)),
              "feedback_store": table_rows(settings.path(p.feedback))}
    return {"served": served, "versions": versions[::-1], "counts": counts, "runs": runs,
            "runs_error": runs_error, "decisions": db.recent_rows(engine, db.decisions, 10)[::-1],
            "version_chart": version_chart(versions, served.get("version")),
            "charts": monitor_charts(reports), "latest_report": reports[-1] if reports else None,
            "deployment": settings.params.retrain.deployment, "shadow": shadow_status(app),
            "deliveries": recent_deliveries(engine), "token_hint": token_hint(settings),
            "alert_sinks_setting": where_set("alerts"),
            **label_panel(settings, versions)}


def add_dashboard(app: FastAPI, guard: Callable[..., None]) -> None:
    """GET /dashboard, GET /api/runs[/{id}], POST /api/retrain."""

    @app.get("/dashboard", response_class=HTMLResponse, name="dashboard")
    def dashboard(request: Request) -> HTMLResponse:
        """The server-rendered dashboard page."""
        return HTMLResponse(templates().get_template("dashboard.html").render(**context(app)))

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        """Recent lifecycle runs (the page refreshes its table from here)."""
        found, error = lifecycle_runs(app.state.settings.params.retrain.deployment)
        return {"runs": found, "error": error}

    @app.get("/api/runs/{run_id}")
    def run(run_id: str) -> dict[str, Any]:
        """One lifecycle run's state (the Retrain progress line polls it)."""
        if not orchestration.api_configured():
            raise HTTPException(503, "Prefect API not configured")
        try:
            return orchestration.read_run(run_id)
        except ValueError as exc:
            raise HTTPException(422, "not a flow run id") from exc

    @app.post("/api/retrain", dependencies=[Depends(guard)])
    def retrain(body: RetrainRequest) -> dict[str, Any]:
        """Start the lifecycle deployment now (bearer token; single-flight applies)."""
        overrides = validate_overrides(app.state.settings.params, body.overrides)
        decision = manual_retrain(app, overrides)
        if not decision.fire:
            raise HTTPException(409, "; ".join(decision.blocked) or "not started")
        return {"flow_run_id": decision.flow_run_id, "exported_rows": decision.exported_rows,
                "reasons": decision.reasons}


def manual_retrain(app: FastAPI, overrides: dict[str, Any]) -> Any:
    """Run the policy with trigger 'manual': single-flight still applies; the cooldown and the
    other waivable guards are skipped, each named in the recorded reasons
    ("manual: cooldown skipped (last retrain ...)")."""
    from textloop.core.layout import Project
    from textloop.loop.retrain_policy import policy_context, run_policy

    if app.state.policy is not None:
        return app.state.policy(overrides)
    settings = app.state.settings
    if not orchestration.api_configured() or settings.project_root is None:
        raise HTTPException(503, "Prefect API not configured (start it with `textloop up`)")
    ctx = policy_context(Project(settings.project_root), app.state.engine)
    return run_policy(ctx, None, trigger="manual", overrides=overrides)
