"""The prediction API: /predict, /feedback, /health, /model, the dashboard and its retrain button.

The served model follows the registry alias (ChampionWatcher); every prediction and feedback row
goes to the SQL log before its answer leaves (PredictionLog group-commits prediction rows of
concurrent requests in one transaction; `serve.log_durability: async` answers first instead).
Request errors are short 422 JSON answers that never echo the input (textloop.serve.validation).
"""

# no `from __future__ import annotations`: FastAPI must see the request classes built at runtime
import asyncio
import contextlib
import functools
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.concurrency import run_in_threadpool

from textloop.core.config import TextConfig
from textloop.core.text import text_hash
from textloop.loop import db
from textloop.loop.privacy import logged_text_rule
from textloop.serve import validation
from textloop.serve.champion import ChampionWatcher, LoadedModel, model_info
from textloop.serve.controls import add_controls
from textloop.serve.dashboard import add_dashboard
from textloop.serve.evidence import add_evidence
from textloop.serve.explain_pages import add_explain
from textloop.serve.label_pages import add_labeling
from textloop.serve.lineage_pages import add_lineage
from textloop.serve.settings import ServeSettings
from textloop.serve.shadow_scoring import ChallengerWatcher, ShadowScorer, add_shadow
from textloop.serve.validation import check_texts, safe, unprocessable

log = logging.getLogger(__name__)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def request_models(max_texts: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """Request bodies with the configured count limit baked in (violations answer 422 JSON).

    Text length is not a schema rule: the shared policy (textloop.core.limits, `text:` in
    params.yaml) truncates or refuses overlong texts, as ingest and batch predict do."""
    Text = Annotated[str, StringConstraints(min_length=1)]

    class PredictRequest(_Body):
        """One text or a list of texts."""

        text: Text | None = None
        texts: list[Text] | None = Field(None, min_length=1, max_length=max_texts)

        @model_validator(mode="after")
        def _one_of(self) -> "PredictRequest":
            """Exactly one input form."""
            if (self.text is None) == (self.texts is None):
                raise ValueError("give exactly one of 'text' or 'texts'")
            return self

    class FeedbackItem(_Body):
        """The true label of a served prediction (by id) or of any text."""

        prediction_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
        text: Text | None = None
        label: Annotated[str, StringConstraints(min_length=1, max_length=200)]

        @model_validator(mode="after")
        def _one_of(self) -> "FeedbackItem":
            """Exactly one way to name the text."""
            if (self.prediction_id is None) == (self.text is None):
                raise ValueError("give exactly one of 'prediction_id' or 'text'")
            return self

    class FeedbackRequest(_Body):
        """One item, or {"items": [...]}."""

        items: list[FeedbackItem] = Field(min_length=1, max_length=max_texts)

        @model_validator(mode="before")
        @classmethod
        def _single(cls, data: Any) -> Any:
            """Accept a bare item as a batch of one."""
            return {"items": [data]} if isinstance(data, dict) and "items" not in data else data

    return PredictRequest, FeedbackRequest


def bearer_guard(token: str) -> Callable[..., None]:
    """A dependency that admits only `Authorization: Bearer <token>` (constant-time compare)."""
    scheme = HTTPBearer(auto_error=False)

    def check(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> None:
        """401 unless the request carries the configured token."""
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def predict_rows(model: LoadedModel, texts: list[str], t0: float,
                 truncated: Iterable[int] = (),
                 logged: Callable[[str], str | None] = lambda text: text
                 ) -> tuple[list[dict], list[dict]]:
    """Score texts once; return the response items and the prediction-log rows.

    `truncated`: positions the length policy cut (their answer says `"truncated": true`; the
    log keeps the text the model saw). `logged`: what the log keeps of a text (privacy rule:
    redacted, or None for hash only); text_hash is always the hash of the normalised text."""
    proba = model.predict_proba(texts)
    best = proba.argmax(axis=1).tolist()
    probs = proba.tolist()
    latency_ms = (time.perf_counter() - t0) * 1000.0
    now, classes, cut = db.utcnow(), model.classes, set(truncated)
    items, rows = [], []
    for i, (text, p, b) in enumerate(zip(texts, probs, best)):
        pid = uuid.uuid4().hex
        by_class = dict(zip(classes, p))
        items.append({"id": pid, "label": classes[b], "confidence": p[b],
                      "probabilities": by_class, "truncated": i in cut})
        rows.append({"id": pid, "created_at": now, "model_name": model.name,
                     "model_version": model.version,
                     "text_hash": text_hash(text),
                     "text": logged(text), "label": classes[b], "confidence": p[b], "probas": by_class,
                     "latency_ms": latency_ms})
    return items, rows


def feedback_rows(engine: Any, items: list[Any], model: LoadedModel, plog: db.PredictionLog,
                  text_cfg: TextConfig, challenger: LoadedModel | None = None
                  ) -> list[dict] | JSONResponse:
    """Validate labels, texts (length policy, blank) and prediction ids; resolve each text.

    A label is known when the champion or the live challenger knows it (a class only the
    challenger knows is what its trial must be judged on). Returns the rows to store, or the
    422 answer when a given text is refused."""
    from textloop.core.label_values import known_label

    known = list(dict.fromkeys([*model.classes, *(challenger.classes if challenger else ())]))
    for item in items:  # as every label source maps it ("positive " and "Positive" = "positive")
        item.label = known_label(item.label, known) or item.label
    bad = sorted({i.label for i in items} - set(known))
    if bad:
        shown = ", ".join(repr(safe(b, 40)) for b in bad[:5])
        raise HTTPException(422, f"unknown label(s) {shown}{' …' if len(bad) > 5 else ''} "
                                 f"({len(bad)} in all); known: {known}")
    given = [n for n, i in enumerate(items) if i.text is not None]
    limited, errors = check_texts([items[n].text for n in given],
                                  [("body", "items", n, "text") for n in given], text_cfg,
                                  model.blank)
    if errors:
        return unprocessable(errors)
    checked = dict(zip(given, limited.texts))
    ids = [i.prediction_id for i in items if i.prediction_id]
    texts = db.texts_of_predictions(engine, ids)
    if len(texts) < len(set(ids)):
        plog.flush()  # async durability: the prediction may still sit in the writer queue
        texts = db.texts_of_predictions(engine, ids)
    missing = sorted(set(ids) - set(texts))
    if missing:
        raise HTTPException(404, f"unknown prediction id(s), or their text is no longer kept "
                                 f"(serve.log_text, serve.retention_days): {missing[:10]}")
    return [{"prediction_id": i.prediction_id, "text": texts.get(i.prediction_id, checked.get(n)),
             "label": i.label, "source": "api", "task": model.name} for n, i in enumerate(items)]


def create_app(settings: ServeSettings, watcher: ChampionWatcher | None = None,
               policy: Callable[..., Any] | None = None,
               challenger: ChampionWatcher | None = None) -> FastAPI:
    """The API app; `watcher`/`policy`/`challenger` are injectable (tests), built from settings
    otherwise (the challenger watcher only with deploy.mode: shadow)."""
    engine = db.open_db(settings.db_url)
    cfg = settings.params.serve
    plog = db.PredictionLog(engine, cfg.log_batch, cfg.log_flush_s, cfg.log_durability)
    log.info("prediction log durability: %s (%s)", cfg.log_durability,
             "an answer leaves after its rows are committed" if plog.durable
             else f"answers first; a crash loses up to {cfg.log_flush_s} s of rows")
    watcher = watcher or ChampionWatcher(settings.model_name, cfg.alias, cfg.poll_s)
    if isinstance(watcher, ChampionWatcher):
        watcher.on_degraded = functools.partial(_alert_degraded, settings, engine)
    if challenger is None and settings.params.deploy.mode == "shadow":
        challenger = ChallengerWatcher(settings.model_name, settings.params.shadow.alias,
                                       cfg.poll_s)
    shadow = challenger and ShadowScorer(engine, settings.params.shadow, challenger)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """Reconcile the registry with the alias authority, start the log writer and the alias
        watcher; stop them (log drained) at shutdown."""
        plog.start()
        await run_in_threadpool(_reconcile, engine, settings.model_name)
        await run_in_threadpool(_first_load, watcher)
        watcher.start()
        if shadow:
            await run_in_threadpool(_first_load, shadow.watcher)
            shadow.start()
        yield
        watcher.stop()
        if shadow:
            shadow.stop()
        plog.stop()

    app = FastAPI(title="textloop", lifespan=lifespan)
    app.state.settings, app.state.engine, app.state.log, app.state.watcher = (
        settings, engine, plog, watcher)
    app.state.policy = policy
    validation.install(app)
    add_shadow(app, shadow)
    _api_routes(app, settings, watcher, plog, engine)
    add_dashboard(app, bearer_guard(settings.token))
    add_evidence(app, bearer_guard(settings.token))
    add_controls(app, bearer_guard(settings.token))
    add_lineage(app, bearer_guard(settings.token))
    add_explain(app, bearer_guard(settings.token))
    add_labeling(app, bearer_guard(settings.token))
    return app


def _alert_degraded(settings: ServeSettings, engine: Any, reason: str) -> None:
    """The served model no longer matches the registry: the `served_model_missing` alert."""
    from textloop.loop.alerts import emit

    emit("served_model_missing", {"model": settings.model_name, "reason": reason},
         settings.params.alerts, engine)


def _reconcile(engine: Any, name: str) -> None:
    """A decision a crash left half-written (database yes, registry no) is completed before
    the champion is loaded; a registry hiccup is not fatal (the next decision reconciles).
    Aliases moved outside textloop are adopted at the next decision, not here."""
    from textloop.loop.aliases import reconcile

    try:
        reconcile(engine, name, adopt=False)
    except Exception:
        log.exception("alias reconciliation of %s failed; the next decision retries it", name)


def _first_load(watcher: ChampionWatcher) -> None:
    """Load the champion before accepting traffic; no champion yet is not fatal."""
    try:
        watcher.refresh()
    except Exception:
        log.exception("initial champion lookup failed; the watcher keeps polling")


def _api_routes(app: FastAPI, settings: ServeSettings, watcher: ChampionWatcher,
                plog: db.PredictionLog, engine: Any) -> None:
    """/predict and /feedback."""
    cfg, text_cfg = settings.params.serve, settings.params.text
    wait_s = settings.params.backend.db_lock_wait_s
    PredictRequest, FeedbackRequest = request_models(cfg.max_texts)
    guard = bearer_guard(settings.token)
    logged = logged_text_rule(cfg.redact_log, cfg.log_text)

    @app.post("/predict")
    async def predict(body: PredictRequest) -> Response:  # type: ignore[valid-type]
        """Label, confidence and per-class probabilities for one or many texts.

        The answer leaves only after its log rows are committed (serve.log_durability: commit);
        503 when they cannot be written. Overlong texts follow `text:`; blank texts are 422."""
        t0 = time.perf_counter()
        model = watcher.current  # one read: the whole request uses one version
        if model is None:
            raise HTTPException(503, "no champion model is available yet")
        texts = body.texts if body.texts is not None else [body.text]
        locs = ([("body", "texts", i) for i in range(len(texts))] if body.texts is not None
                else [("body", "text")])
        limited, errors = check_texts(texts, locs, text_cfg, model.blank)
        if errors:
            return unprocessable(errors)
        items, rows = predict_rows(model, limited.texts, t0, limited.truncated, logged)
        stored = plog.put(rows)
        if app.state.shadow is not None:  # the challenger scores it off the response path
            app.state.shadow.offer([r["id"] for r in rows], limited.texts, model)
        if plog.durable:
            try:
                if not stored.done():  # committed inline already: no hop through the loop
                    # bounded: the rows are still written once the log is free, unanswered
                    await asyncio.wait_for(asyncio.wrap_future(stored), wait_s)
                stored.result()
            except db.LogWriteError:
                raise HTTPException(503, "the prediction could not be logged; not answered "
                                         "(retry)") from None
            except TimeoutError:
                raise HTTPException(503, f"the prediction log did not commit within {wait_s:g} s "
                                         "(backend.db_lock_wait_s; another process holds the "
                                         "database?); not answered (retry)") from None
        out = {"model": {"name": model.name, "version": model.version}, "predictions": items}
        return Response(orjson.dumps(out), media_type="application/json")

    @app.post("/feedback", dependencies=[Depends(guard)], response_model=None)
    def feedback(body: FeedbackRequest) -> dict[str, Any] | JSONResponse:  # type: ignore[valid-type]
        """Record true labels, by prediction id or by text (bearer token required)."""
        model = watcher.current
        if model is None:
            raise HTTPException(503, "no champion model: the label set is unknown")
        shadow = app.state.shadow
        rows = feedback_rows(engine, body.items, model, plog, text_cfg,
                             shadow.watcher.current if shadow is not None else None)
        if isinstance(rows, JSONResponse):
            return rows
        return {"stored": len(db.insert_feedback(engine, rows))}

    _ops_routes(app, watcher, plog, wait_s)


def _ops_routes(app: FastAPI, watcher: ChampionWatcher, plog: db.PredictionLog,
                wait_s: float) -> None:
    """/health, /model and / (redirects to the dashboard)."""

    @app.get("/health")
    def health() -> JSONResponse:
        """200 with a model loaded (status ok, or degraded with the reason when the registry
        no longer points at it: deleted, or moved to a version that cannot load, or when a
        prediction-log write has waited longer than backend.db_lock_wait_s), 503 before;
        prediction-log writer counters."""
        model = watcher.current
        degraded = getattr(watcher, "degraded", None)
        stalled = plog.stalled_for()
        if not degraded and stalled > wait_s:  # answers wait for the log: say why they fail
            degraded = (f"prediction log: a write has waited {stalled:.0f} s for the database "
                        "(held by another process?); /predict answers 503 meanwhile")
        body = {"status": ("degraded" if degraded else "ok") if model else "no_model",
                "reason": degraded, "model_version": model.version if model else None,
                "log": {"written": plog.written, "queued": plog.queue.qsize(),
                        "failed": plog.failed}}
        return JSONResponse(body, status_code=200 if model else 503)

    @app.get("/model")
    def model() -> dict[str, Any]:
        """The served registered version: name, version, classes, tags."""
        return model_info(watcher)

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> RedirectResponse:
        """The dashboard is the landing page."""
        return RedirectResponse(request.url_for("dashboard"))
