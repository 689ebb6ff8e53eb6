"""Hot reload: follow a registry alias, load the new version in the background, swap atomically."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textloop.core.model import empty_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One immutable snapshot of the served model; requests read it once and keep it."""

    name: str
    version: str
    classifier: Any  # textloop.pipeline.models.NormalizingClassifier (classes_, predict_proba)
    classes: tuple[str, ...]
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    loaded_at: str = ""
    clean: dict[str, Any] = field(default_factory=dict)  # the normalisation it was trained with

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities straight from the classifier (no DataFrame round trip)."""
        return np.asarray(self.classifier.predict_proba(texts), dtype=float)

    def blank(self, text: str) -> bool:
        """True when the text is empty after this model's normalisation (training drops those)."""
        return empty_text(text, self.clean)


def resolve_alias(name: str, alias: str) -> tuple[str, str | None, dict[str, str]] | None:
    """(version, run_id, tags) the alias points at, or None when it does not exist (yet)."""
    from mlflow import MlflowClient

    from textloop.pipeline.registry import current_champion

    mv = current_champion(MlflowClient(), name, alias)
    return None if mv is None else (str(mv.version), mv.run_id, dict(mv.tags or {}))


def load_version(name: str, version: str, run_id: str | None,
                 tags: dict[str, str]) -> LoadedModel:
    """Load a registered version as pyfunc and unwrap the classifier behind it."""
    from textloop.pipeline.pyfunc import load_registered

    clf = load_registered(f"models:/{name}/{version}")
    clf.predict_proba(["warm up"])  # first call builds caches; keep it off the request path
    return LoadedModel(name=name, version=version, classifier=clf,
                       classes=tuple(str(c) for c in clf.classes_), run_id=run_id, tags=tags,
                       loaded_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                       clean=dict(getattr(clf, "meta", {}).get("clean", {})))


class ChampionWatcher:
    """Polls `models:/<name>@<alias>`; a changed version is loaded off-thread, then swapped in."""

    def __init__(self, name: str, alias: str = "champion", poll_s: float = 2.0,
                 resolver: Callable[..., Any] = resolve_alias,
                 loader: Callable[..., LoadedModel] = load_version):
        self.name, self.alias, self.poll_s = name, alias, poll_s
        self._resolve, self._load = resolver, loader
        self.current: LoadedModel | None = None  # replaced by one assignment: atomic for readers
        self.last_error: str | None = None
        self.degraded: str | None = None  # why the loaded model no longer matches the registry
        self.on_degraded: Callable[[str], None] | None = None  # called once per new reason
        self._broken: str | None = None  # a version that failed to load is not retried
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)

    def refresh(self) -> bool:
        """Check the alias once; load and swap when it moved. True when a new version went live."""
        target = self._resolve(self.name, self.alias)
        if target is None:
            if self.current is not None:  # the served version was deleted or the alias removed
                self._degrade(f"{self.name}@{self.alias} no longer points at a registered "
                              f"version (v{self.current.version} deleted or the alias removed);"
                              f" still answering with the loaded v{self.current.version}")
            return False
        version, run_id, tags = target
        if self.current and self.current.version == version:
            self._degrade(None)
            return False
        if version == self._broken:
            return False
        try:
            loaded = self._load(self.name, version, run_id, tags)
        except Exception as exc:  # a broken version must not take the served one down
            self.last_error, self._broken = f"loading {self.name} v{version}: {exc}", version
            log.exception("could not load %s v%s; keeping the current model", self.name, version)
            if self.current is not None:
                self._degrade(f"{self.name}@{self.alias} moved to v{version}, which could not "
                              f"be loaded; still answering with v{self.current.version}")
            return False
        self.current, self.last_error = loaded, None
        self._degrade(None)
        log.info("serving %s v%s", self.name, version)
        return True

    def _degrade(self, reason: str | None) -> None:
        """Record (or clear) why the served model no longer matches the registry; a new
        reason is logged and handed to `on_degraded` (the API's alert) once."""
        if reason == self.degraded:
            return
        self.degraded = reason
        if reason is None:
            log.info("serving %s again as the registry says", self.name)
            return
        log.warning("degraded: %s", reason)
        if self.on_degraded is not None:
            try:
                self.on_degraded(reason)
            except Exception:
                log.exception("could not report the degraded state")

    def start(self) -> ChampionWatcher:
        """Start polling in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        """Poll until stopped; registry hiccups are logged, never fatal."""
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:
                log.exception("champion alias check failed")
            self._stop.wait(self.poll_s)


def model_info(watcher: ChampionWatcher) -> dict[str, Any]:
    """What /model and the dashboard say about the served version."""
    m = watcher.current
    base = {"name": watcher.name, "alias": watcher.alias, "last_error": watcher.last_error}
    if m is None:
        return {**base, "version": None}
    return {**base, "version": m.version, "run_id": m.run_id, "classes": list(m.classes),
            "tags": m.tags, "loaded_at": m.loaded_at}
