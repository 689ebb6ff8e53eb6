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
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    clf = pyfunc.unwrap_python_model().model
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
        self._broken: str | None = None  # a version that failed to load is not retried
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)

    def refresh(self) -> bool:
        """Check the alias once; load and swap when it moved. True when a new version went live."""
        target = self._resolve(self.name, self.alias)
        if target is None:
            return False
        version, run_id, tags = target
        if version == self._broken or (self.current and self.current.version == version):
            return False
        try:
            loaded = self._load(self.name, version, run_id, tags)
        except Exception as exc:  # a broken version must not take the served one down
            self.last_error, self._broken = f"loading {self.name} v{version}: {exc}", version
            log.exception("could not load %s v%s; keeping the current model", self.name, version)
            return False
        self.current, self.last_error = loaded, None
        log.info("serving %s v%s", self.name, version)
        return True

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
