"""The labeling page (/label) and its API: one item at a time from the active queue
(`textloop label next`), the model's guess, one button per class (keys 1-9), skip, undo, progress,
per-annotator counts, agreement and the review list. Every /api/label call needs the bearer
token; the answers' storage, agreement and export rules are textloop/loop/label_store.py."""

# no `from __future__ import annotations`: FastAPI must see the request classes at runtime
from collections.abc import Callable
from typing import Annotated, Any

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.concurrency import run_in_threadpool

from textloop.loop import label_store
from textloop.loop.active_queue import QUEUE_COLUMNS, read_queue
from textloop.loop.text_copies import is_erased

Annotator = Annotated[str, StringConstraints(min_length=1, max_length=100,
                                             pattern=r"^[\w .@+-]+$")]


class AnswerRequest(BaseModel):
    """One annotator's label for one queue item."""

    model_config = ConfigDict(extra="forbid")
    annotator: Annotator
    item_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    label: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class UndoRequest(BaseModel):
    """Take back this annotator's newest answer."""

    model_config = ConfigDict(extra="forbid")
    annotator: Annotator


def _queue(app: FastAPI) -> pd.DataFrame:
    """The active queue of the served project (empty without one)."""
    path = app.state.settings.path(app.state.settings.params.paths.active_queue)
    return read_queue(path) if path is not None else pd.DataFrame(columns=QUEUE_COLUMNS)


def _classes(app: FastAPI) -> list[str]:
    """The served model's classes: the only labels an answer may carry (503 before a model)."""
    model = app.state.watcher.current
    if model is None:
        raise HTTPException(503, "no champion model: the label set is unknown")
    return list(model.classes)


def _state(app: FastAPI, annotator: str, skip: set[str]) -> dict[str, Any]:
    """The next item for this annotator, the progress and the classes."""
    queue = _queue(app)
    answers = label_store.read_answers(app.state.engine)
    fraction = app.state.settings.params.label.double_annotate_fraction
    item = label_store.next_item(queue, answers, annotator, fraction, skip)
    shown = None if item is None else {k: item[k] for k in ("item_id", "text", "origin", "guess",
                                                            "confidence", "rank")}
    return {"item": shown, "classes": _classes(app),
            "progress": label_store.progress(queue, answers, annotator)}


def add_labeling(app: FastAPI, guard: Callable[..., None]) -> None:
    """GET /label; GET /api/label/next, POST /api/label/answer, POST /api/label/undo,
    GET /api/label/review, POST /api/label/export (all /api/label routes: bearer token)."""

    @app.get("/label", response_class=HTMLResponse, name="label")
    def page() -> HTMLResponse:
        """The labeling page (the session's sign-in, says where the token is, asks for a name;
        the data comes from the API)."""
        from textloop.serve.page_templates import templates
        from textloop.serve.settings import token_hint

        return HTMLResponse(templates().get_template("label.html").render(
            token_hint=token_hint(app.state.settings)))

    @app.get("/api/label/next", dependencies=[Depends(guard)])
    def next_(annotator: Annotator, skip: Annotated[str, Query(max_length=20000)] = ""
              ) -> dict[str, Any]:
        """The next item for `annotator` (none: null), skipping the comma-separated ids."""
        return _state(app, annotator, {s for s in skip.split(",") if s})

    @app.post("/api/label/answer", dependencies=[Depends(guard)])
    def answer(body: AnswerRequest) -> dict[str, Any]:
        """Store the answer; 404 unknown item, 410 erased text, 422 unknown label, 409 already
        answered."""
        from textloop.core.label_values import known_label

        body.label = known_label(body.label, _classes(app)) or body.label  # as every source maps it
        if body.label not in _classes(app):
            raise HTTPException(422, f"unknown label; known: {_classes(app)}")
        queue = _queue(app)
        found = queue[queue["item_id"] == body.item_id]
        if found.empty:
            raise HTTPException(404, "unknown item id (not in the active queue)")
        item = found.iloc[0].to_dict()
        item["task"] = item.get("task") or app.state.settings.model_name  # the queue's task
        if is_erased(app.state.engine, item["text"]):  # a stale copy: never written back
            raise HTTPException(410, "this item's text was erased (textloop forget)")
        try:
            result = label_store.answer(app.state.engine, item, body.annotator, body.label,
                                     app.state.settings.params.label.double_annotate_fraction)
        except label_store.LabelConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return {"answer": result, **_state(app, body.annotator, set())}

    @app.post("/api/label/undo", dependencies=[Depends(guard)])
    def undo(body: UndoRequest) -> dict[str, Any]:
        """Remove this annotator's newest answer; 409 once it was exported to the store."""
        try:
            removed = label_store.undo_last(app.state.engine, body.annotator)
        except label_store.LabelConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return {"undone": removed, **_state(app, body.annotator, set())}

    @app.get("/api/label/review", dependencies=[Depends(guard)])
    def review() -> dict[str, Any]:
        """Items the annotators disagreed on (kept out of training) and the agreement."""
        answers = label_store.read_answers(app.state.engine)
        return {"items": label_store.review_list(answers, _queue(app)),
                "agreement": label_store.progress(_queue(app), answers, None)["agreement"]}

    @app.post("/api/label/export", dependencies=[Depends(guard)])
    async def export() -> dict[str, Any]:
        """Export the pending feedback (agreed answers included) to the DVC store now."""
        from textloop.core.layout import Project

        root = app.state.settings.project_root
        if root is None:
            raise HTTPException(503, "no project: nothing to export to")
        return await run_in_threadpool(label_store.export, Project(root), app.state.engine)


def label_panel(settings: Any, versions: list[dict[str, Any]]) -> dict[str, Any]:
    """The dashboard's labeling block: label counts (label report + active queue), the first
    items of the active queue (the /label page's order) and the learning curve (test accuracy vs labeled training rows across registered versions)."""
    from textloop.pipeline.labelstats import counts_from_files, counts_from_report, learning_curve
    from textloop.serve import charts

    p = settings.params.paths
    report, path = settings.path(p.label_report), settings.path(p.active_queue)
    counts = (counts_from_files(report, path) if report is not None and path is not None
              else counts_from_report(None, None))
    curve = learning_curve((v["version"], v["tags"]) for v in versions)
    chart = (charts.line_chart([f"{p['labeled_rows']} (v{p['version']})" for p in curve],
                               {"test accuracy": [p["accuracy"] for p in curve]},
                               "learning curve: accuracy vs labeled rows")
             if curve else charts.empty_chart("no version with train_rows/test_accuracy tags"))
    queue = read_queue(path) if path is not None else pd.DataFrame(columns=QUEUE_COLUMNS)
    return {"label_counts": counts, "learning_curve": chart,
            "label_next": queue.head(5).to_dict("records")}
