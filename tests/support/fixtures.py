"""Test and benchmark support: a tiny registered champion, synthetic text streams, and a real
uvicorn server on 127.0.0.1 in a thread. Nothing here runs at import time."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

POSITIVE = ["good", "great", "excellent", "lovely", "wonderful", "enjoyable", "brilliant", "fun"]
NEGATIVE = ["bad", "terrible", "awful", "boring", "dull", "poor", "horrible", "weak"]
# the vocabulary shift of the replayed stream: new sentiment words v1 never saw
POSITIVE_NEW = ["superb", "stellar", "marvelous", "delightful", "splendid", "riveting"]
NEGATIVE_NEW = ["dreadful", "abysmal", "atrocious", "tedious", "lousy", "insipid"]
FILLER = ["the", "movie", "film", "plot", "acting", "was", "really", "quite", "story", "and",
          "scenes", "cast", "ending", "overall", "it", "felt", "director", "script"]


def synthetic(n: int, seed: int, shifted: bool = False, pos_share: float = 0.5) -> pd.DataFrame:
    """Labeled pos/neg texts; `shifted` draws sentiment words from the unseen vocabulary."""
    rng = np.random.default_rng(seed)
    pos, neg = (POSITIVE_NEW, NEGATIVE_NEW) if shifted else (POSITIVE, NEGATIVE)
    rows = []
    for _ in range(n):
        label = "pos" if rng.random() < pos_share else "neg"
        words = list(rng.choice(FILLER, size=int(rng.integers(6, 14))))
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)),
                         str(rng.choice(pos if label == "pos" else neg)))
        rows.append((" ".join(words), label))
    return pd.DataFrame(rows, columns=["text", "label"])


def train_tiny(train: pd.DataFrame, folder: Path) -> Path:
    """A word TF-IDF + logistic regression saved as a textloop model folder."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from tasks.train.baseline import model_types
    from textloop.core.estimator_state import FORMAT, save_estimator
    from textloop.core.model import write_meta

    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0, max_iter=500))
    pipe.fit(train["text"].tolist(), train["label"].tolist())
    folder.mkdir(parents=True, exist_ok=True)
    save_estimator(pipe, folder, model_types())
    write_meta(folder, "sklearn", list(pipe.classes_), {"format": FORMAT, "clean": {}})
    return folder


def register_champion(folder: Path, name: str, tags: dict[str, str] | None = None,
                      alias: str | None = "champion") -> str:
    """Log the folder as a pyfunc, register it, optionally move the alias; returns the version."""
    import mlflow
    from mlflow import MlflowClient

    from textloop.pipeline.pyfunc import MODEL_CODE

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),
                                       artifacts={"model_dir": str(folder)},
                                       pip_requirements=["scikit-learn"])
    version = mlflow.register_model(info.model_uri, name, tags=tags or {})
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def free_socket() -> socket.socket:
    """A listening-ready socket bound to an ephemeral loopback port (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets
    # TCP_NODELAY only on sockets whose proto is TCP; proto 0 would cost 40 ms per response
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve_in_thread(app: Any, startup_s: float = 60.0) -> Iterator[str]:
    """Run `app` under uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def mlflow_sandbox(folder: Path) -> Iterator[str]:
    """Point MLflow (tracking + registry) at a SQLite file and artifact folder under `folder`."""
    import os

    import mlflow

    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_DISABLE_TELEMETRY")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"})
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # MLflow also exports it as $MLFLOW_REGISTRY_URI
    exp = mlflow.MlflowClient().create_experiment(
        "textloop-tests", artifact_location=(folder / "artifacts").resolve().as_uri())
    mlflow.set_experiment(experiment_id=exp)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None: back to the default
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for key, value in saved.items():  # after the setters, which export variables
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held together while picked, so they differ)."""
    socks = [free_socket() for _ in range(n)]
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextlib.contextmanager
def prefect_api(stub_deployment: bool = True) -> Iterator[None]:
    """A temporary Prefect server (analytics off), optionally with the stub
    `lifecycle/lifecycle` deployment (no runner); the environment is restored afterwards."""
    import os

    import mlflow
    from prefect.testing.utilities import prefect_test_harness

    saved = dict(os.environ)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    try:
        with prefect_test_harness(server_startup_timeout=120):
            if stub_deployment:
                from tests.support.stub_flows import stub_lifecycle

                stub_lifecycle.to_deployment(name="lifecycle", concurrency_limit=1).apply()
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        mlflow.set_tracking_uri(None)


class StubWatcher:
    """The served model as the label routes see it: only the classes matter."""

    current = SimpleNamespace(classes=("neg", "pos"), version="1", name="m", blank=lambda t: False,
                              run_id="r", tags={}, loaded_at="now")
    name, alias, last_error = "m", "champion", None

    def refresh(self):
        return None

    def start(self):
        return None

    def stop(self):
        return None
