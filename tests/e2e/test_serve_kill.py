"""Kill drill: SIGKILL `textloop serve` under load, reopen its database, and find every answered
prediction and every answered feedback row stored (serve.log_durability: commit).

The server runs in a subprocess (this file run as a script) with a tiny real model; eight
asyncio clients post single texts, batches and feedback; once enough answers are in, the server
gets SIGKILL while requests are still in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
TOKEN = "kill-drill"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def serve(work: Path, port: int, durability: str) -> None:
    """Server role: the real app and uvicorn, the champion injected (no MLflow needed)."""
    import uvicorn

    from tests.support.fixtures import synthetic, train_tiny
    from textloop.core.config import Params
    from textloop.loop import db
    from textloop.pipeline.models import NormalizingClassifier
    from textloop.serve.app import create_app
    from textloop.serve.champion import ChampionWatcher, LoadedModel
    from textloop.serve.settings import ServeSettings

    clf = NormalizingClassifier(train_tiny(synthetic(300, seed=1), work / "model"))
    model = LoadedModel("drill", "1", clf, tuple(clf.classes_), clean=clf.meta.get("clean", {}))
    watcher = ChampionWatcher("drill", resolver=lambda *_: ("1", None, {}),
                              loader=lambda *_: model)
    params = Params.model_validate({"serve": {"log_durability": durability}})
    settings = ServeSettings(model_name="drill", db_url=db.default_url(work), token=TOKEN,
                             params=params)
    uvicorn.run(create_app(settings, watcher=watcher), host="127.0.0.1", port=port,
                log_level="error", access_log=False)


def _start(work: Path, durability: str) -> tuple[subprocess.Popen, str]:
    """Start the server subprocess; wait (bounded) until /health answers 200."""
    from tests.support.fixtures import free_ports

    (port,) = free_ports(1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, __file__, str(work), str(port), durability],
                            cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server did not become healthy")
        time.sleep(0.1)


async def _load(url: str, proc: subprocess.Popen, kill_after: int) -> tuple[set, set]:
    """Eight clients post until the server dies; SIGKILL it after `kill_after` answers.

    Returns (ids of answered predictions, (prediction_id, label) of answered feedback)."""
    answered: set[str] = set()
    fed: set[tuple[str, str]] = set()
    enough = asyncio.Event()

    async def client(c: int) -> None:
        """Predict 1 or 5 texts, and send feedback on every third answer, until errors."""
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for i in range(100_000):
                texts = [f"client {c} request {i} a great fun film {k}" for k in range(1 + 4 * (i % 2))]
                try:
                    resp = await http.post("/predict", json={"texts": texts})
                    if resp.status_code != 200:
                        return
                    ids = [p["id"] for p in resp.json()["predictions"]]
                    answered.update(ids)
                    if i % 3 == 0:
                        fb = await http.post("/feedback", headers=AUTH,
                                             json={"prediction_id": ids[0], "label": "neg"})
                        if fb.status_code == 200:
                            fed.add((ids[0], "neg"))
                except httpx.HTTPError:
                    return
                if len(answered) >= kill_after:
                    enough.set()

    tasks = [asyncio.create_task(client(c)) for c in range(8)]
    await asyncio.wait_for(enough.wait(), 60)
    proc.send_signal(signal.SIGKILL)  # requests of the other clients are in flight now
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return answered, fed


def _stored(work: Path) -> tuple[set, set]:
    """Reopen the killed server's database: prediction ids and (prediction_id, label) feedback."""
    engine = sa.create_engine(f"sqlite:///{work / 'serve.db'}")
    with engine.connect() as conn:
        preds = {r[0] for r in conn.execute(sa.text("select id from predictions"))}
        fb = {(r[0], r[1]) for r in conn.execute(sa.text("select prediction_id, label "
                                                         "from feedback"))}
    engine.dispose()
    return preds, fb


@pytest.mark.e2e
def test_sigkill_under_load_loses_no_answered_prediction(tmp_path):
    proc, url = _start(tmp_path, "commit")
    try:
        answered, fed = asyncio.run(_load(url, proc, kill_after=1500))
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    stored, stored_fb = _stored(tmp_path)
    assert len(answered) >= 1500 and len(fed) >= 100
    assert answered - stored == set()  # 0 answered-but-unlogged predictions
    assert fed - stored_fb == set()  # 0 answered-but-unstored feedback rows


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
