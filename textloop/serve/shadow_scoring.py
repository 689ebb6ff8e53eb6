"""Shadow scoring: the challenger answers the same requests as the champion, off the response
path. /predict hands (prediction ids, texts) to a bounded queue without waiting (at most
`shadow.budget_ms` when the queue is full, then the texts are skipped and counted); a worker
thread scores them with the challenger and writes `shadow_predictions` rows keyed by the
champion's prediction id. The challenger follows its registry alias (`shadow.alias`) like the
champion does; no alias, no shadow work. Also the /shadow JSON route and the dashboard block's
data (champion vs challenger)."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from textloop.core.config import ShadowConfig
from textloop.loop import db
from textloop.serve.champion import ChampionWatcher, LoadedModel

log = logging.getLogger(__name__)
Job = tuple[list[str], list[str], str]  # prediction ids, texts, champion version


class ChallengerWatcher(ChampionWatcher):
    """A ChampionWatcher on the challenger alias that also notices the alias going away
    (promoted or retired): then there is no challenger and shadow scoring stops."""

    def refresh(self) -> bool:
        """Reload when the challenger alias moved; when it was removed, stop shadow scoring
        (False)."""
        if self._resolve(self.name, self.alias) is None:
            if self.current is not None:
                log.info("challenger alias %r removed; shadow scoring stops", self.alias)
            self.current = None
            return False
        return super().refresh()


class ShadowScorer:
    """The bounded queue + worker that scores requests with the challenger and logs them."""

    def __init__(self, engine: Engine, cfg: ShadowConfig, watcher: ChampionWatcher,
                 rng: Callable[[], float] = random.random):
        self.engine, self.cfg, self.watcher, self._rng = engine, cfg, watcher, rng
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=cfg.queue_max)
        self.scored = self.skipped = self.failed = 0
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)

    def offer(self, ids: list[str], texts: list[str], champion: LoadedModel) -> bool:
        """Hand a request to the shadow (sampled by shadow.fraction); never waits longer than
        shadow.budget_ms. True when queued."""
        chal = self.watcher.current
        if chal is None or chal.version == champion.version or self._rng() >= self.cfg.fraction:
            return False
        try:
            self.queue.put((ids, texts, champion.version), timeout=self.cfg.budget_ms / 1000)
        except queue.Full:
            self.skipped += len(texts)
            return False
        return True

    def start(self) -> ShadowScorer:
        """Start the challenger watcher and the worker."""
        self.watcher.start()
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Score what is queued, then stop."""
        self.watcher.stop()
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty and its last job written (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        """The worker: score queued jobs until the stop marker; a failing job is counted and
        logged, never raised into the serving thread."""
        while (job := self.queue.get()) is not None:
            try:
                self._score(*job)
            except Exception:
                self.failed += len(job[0])
                log.exception("shadow scoring failed for %d texts", len(job[0]))
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def _score(self, ids: list[str], texts: list[str], champion_version: str) -> None:
        """Score one job with the challenger loaded now and write its rows."""
        chal = self.watcher.current
        if chal is None:
            self.skipped += len(texts)
            return
        t0 = time.perf_counter()
        proba = chal.predict_proba(texts)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        now, rows = db.utcnow(), []
        for pid, p in zip(ids, proba.tolist(), strict=True):
            best = max(range(len(p)), key=p.__getitem__)
            rows.append({"prediction_id": pid, "created_at": now, "model_name": chal.name,
                         "model_version": chal.version, "champion_version": champion_version,
                         "label": chal.classes[best], "confidence": p[best],
                         "probas": dict(zip(chal.classes, p, strict=True)),
                         "latency_ms": latency_ms})
        db.insert_shadow(self.engine, rows)
        self.scored += len(rows)


def shadow_status(app: FastAPI) -> dict[str, Any]:
    """Champion vs challenger for /shadow and the dashboard: versions, worker counters and the
    comparison of their paired predictions so far (tasks.monitor.shadow_rule.compare)."""
    from tasks.monitor.shadow_rule import compare, decide, shared_classes

    scorer: ShadowScorer | None = getattr(app.state, "shadow", None)
    champ = app.state.watcher.current
    chal = scorer.watcher.current if scorer else None
    out: dict[str, Any] = {"champion": champ and champ.version, "challenger": chal and chal.version}
    if scorer is None or champ is None or chal is None:
        return out
    params = app.state.settings.params
    pairs = db.read_shadow_pairs(app.state.engine, champ.version, chal.version,
                                 params.monitor.window)
    cmp = compare(pairs, shared_classes(champ.classes, chal.classes))
    out.update(comparison=cmp.to_dict(), outlook=decide(cmp, params.shadow),
               worker={"scored": scorer.scored, "skipped": scorer.skipped,
                       "failed": scorer.failed, "queued": scorer.queue.qsize()})
    return out


def add_shadow(app: FastAPI, scorer: ShadowScorer | None) -> None:
    """GET /shadow: champion vs challenger (JSON)."""
    app.state.shadow = scorer

    @app.get("/shadow")
    def shadow() -> dict[str, Any]:
        """The challenger in shadow (if any), its agreement and live accuracy beside the
        champion's on the same requests."""
        return shadow_status(app)
