"""POST /explain (why one text got its label), the dashboard's Explain page (GET /explain) and
the served version's global view (GET /api/explain/global).

The text goes through the same checks as /predict (length policy, empty after normalisation);
the explanation comes from the served model's explain() (textloop.core.model.Explainable), with
the `explain:` settings of params.yaml. Explanations are not logged: nothing is kept."""

# no `from __future__ import annotations`: FastAPI must see the request classes built at runtime
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.concurrency import run_in_threadpool

from textloop.core.errors import UserError
from textloop.serve.dashboard import templates
from textloop.serve.validation import check_texts, unprocessable


class ExplainRequest(BaseModel):
    """One text, and optionally the class to explain (default: the predicted one)."""

    model_config = ConfigDict(extra="forbid")
    text: Annotated[str, StringConstraints(min_length=1)]
    target: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


def explain_one(model: Any, text: str, target: str | None, options: dict[str, Any]) -> dict:
    """The served classifier's explanation of one text (CPU-bound: run off the event loop).

    Raises HTTPException 422 for an unknown target, 501 when the model kind cannot explain."""
    if target is not None and target not in model.classes:
        raise HTTPException(422, f"unknown target class; known: {list(model.classes)}")
    if not callable(getattr(model.classifier, "explain", None)):
        raise HTTPException(501, "the served model cannot explain its predictions")
    try:
        return model.classifier.explain(text, target=target, **options)
    except UserError as exc:
        raise HTTPException(501, str(exc)) from None


def add_explain(app: FastAPI, guard: Callable[..., None]) -> None:
    """POST /explain, GET /explain (page), GET /api/explain/global (no token: read-only)."""
    settings = app.state.settings
    cfg, text_cfg = settings.params.explain, settings.params.text
    options = {"method": cfg.method, "steps": cfg.steps, "top_k": cfg.top_k}

    @app.post("/explain", response_model=None)
    async def explain(body: ExplainRequest) -> Response:
        """Spans of the text with their contribution to the predicted (or target) class's logit,
        the top features for and against, and the model version; 422 like /predict."""
        t0 = time.perf_counter()
        model = app.state.watcher.current
        if model is None:
            raise HTTPException(503, "no champion model is available yet")
        limited, errors = check_texts([body.text], [("body", "text")], text_cfg, model.blank)
        if errors:
            return unprocessable(errors)
        out = await run_in_threadpool(explain_one, model, limited.texts[0], body.target, options)
        out.update(model={"name": model.name, "version": model.version},
                   truncated=bool(limited.truncated), latency_ms=(time.perf_counter() - t0) * 1e3)
        return JSONResponse(out)

    @app.get("/api/explain/global")
    def global_view(version: str | None = None) -> dict[str, Any]:
        """Top n-grams per class of the served version, or of registered `version` (logged
        with the model); `global` is null for models without one (transformers)."""
        model = app.state.watcher.current
        if version is None and model is None:
            raise HTTPException(503, "no champion model is available yet")
        shown = version or model.version
        return {"model": {"name": settings.model_name, "version": shown},
                "global": version_view(app, model, version)}

    @app.get("/explain", response_class=HTMLResponse)
    def page(request: Request, version: str | None = None) -> HTMLResponse:
        """The Explain page: a text box (the answer is drawn as highlighted spans) and the
        global view of the served version or of `?version=N`, with links to every version."""
        from textloop.serve.dashboard import registry_versions

        model = app.state.watcher.current
        shown = version or (model.version if model else None)
        html = templates().get_template("explain.html").render(
            model=model, global_view=version_view(app, model, version) if shown else None,
            shown=shown, versions=[v["version"] for v in registry_versions(settings.model_name)],
            method=cfg.method)
        return HTMLResponse(html)


def version_view(app: FastAPI, model: Any, version: str | None) -> dict[str, Any] | None:
    """The served model's global view (in memory), or a registered version's (from MLflow).

    Raises HTTPException 422 for a version that is not a number."""
    if version is None or (model is not None and version == model.version):
        return _global(model)
    if not version.isdigit():
        raise HTTPException(422, "version must be a number")
    from textloop.pipeline.registry import global_explanation

    return global_explanation(app.state.settings.model_name, version)


def _global(model: Any) -> dict[str, Any] | None:
    """The classifier's saved global view, when it has one."""
    view = getattr(model.classifier, "global_view", None)
    return view() if callable(view) else None
