"""Approve and reject of one pending version released together against a real API: exactly one
wins, the loser gets 409 naming the winner, and the registry (served champion, approval.state
tag) agrees with the loop database. A crash between the database write and the registry write
is repaired from the database's record at the next start and at the next decision."""

from __future__ import annotations

import threading

import httpx
import mlflow
import pytest

from tests.support import fixtures as testing
from textloop.core.config import Params
from textloop.loop import aliases, db
from textloop.pipeline import registry
from textloop.serve.app import create_app
from textloop.serve.settings import ServeSettings

TOKEN = "race-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUNDS = 8


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A private MLflow store holding the tiny model's files once (new versions reuse them)."""
    root = tmp_path_factory.mktemp("approval")
    with testing.mlflow_sandbox(root / "mlruns") as uri:
        folder = testing.train_tiny(testing.synthetic(120, seed=5), root / "model")
        first = testing.register_champion(folder, "race-seed", alias=None)
        yield uri, registry.get_version("race-seed", first).source


@pytest.fixture
def store(seeded, monkeypatch):
    """The module's MLflow store for this test (each test's environment is restored after it);
    yields the uploaded model's source."""
    uri, source = seeded
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(key, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return source


def _new_version(name: str, source: str) -> str:
    with mlflow.start_run() as run:
        pass
    client = registry.mlflow_client()
    return str(client.create_model_version(name, source, run_id=run.info.run_id).version)


def _model(name: str, source: str, engine) -> str:
    """A registered model whose v1 is champion (recorded in the loop database)."""
    registry.mlflow_client().create_registered_model(name)
    v1 = _new_version(name, source)
    registry.move_alias(name, "champion", v1, action="deploy", reason="first", actor="run r1",
                        journal=aliases.db_journal(engine))
    return v1


def _app(tmp_path, name: str):
    settings = ServeSettings(model_name=name, db_url=db.default_url(tmp_path / "state"),
                             token=TOKEN, params=Params.model_validate({"serve": {"poll_s": 60}}))
    return create_app(settings)


def _together(url: str, version: str) -> dict[str, httpx.Response]:
    """POST approve (ana) and reject (bo) of `version`, released by one barrier."""
    barrier = threading.Barrier(2)
    out: dict[str, httpx.Response] = {}

    def send(action: str, user: str) -> None:
        with httpx.Client(timeout=120) as http:
            barrier.wait()
            out[action] = http.post(f"{url}/api/versions/{version}/{action}", headers=AUTH,
                                    json={"reason": f"{action} it", "user": user})

    threads = [threading.Thread(target=send, args=a) for a in (("approve", "ana"),
                                                                ("reject", "bo"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return out


def _tag(name: str, version: str) -> str | None:
    return registry.get_version(name, version).tags.get("approval.state")


def _champion(name: str) -> str:
    return str(registry.current_champion(registry.mlflow_client(), name).version)


def test_approve_and_reject_released_together_have_one_winner(store, tmp_path) -> None:
    name = "race-approval"
    app = _app(tmp_path, name)
    engine = app.state.engine
    champion = _model(name, store, engine)
    wins = {"approve": 0, "reject": 0}
    with testing.serve_in_thread(app) as url:
        for _ in range(ROUNDS):
            version = _new_version(name, store)
            registry.move_alias(name, "pending", version, action="pending", reason="passed",
                                actor="run r", journal=aliases.db_journal(engine))
            out = _together(url, version)
            codes = sorted(r.status_code for r in out.values())
            assert codes == [200, 409], {k: r.text for k, r in out.items()}
            won = "approve" if out["approve"].status_code == 200 else "reject"
            lost = "reject" if won == "approve" else "approve"
            wins[won] += 1
            detail = out[lost].json()["detail"]
            assert f"{won} by {'ana' if won == 'approve' else 'bo'}" in detail, detail
            champion = version if won == "approve" else champion
            assert _champion(name) == champion  # the served alias follows the winner only
            assert _tag(name, version) == ("approved" if won == "approve" else "rejected")
            assert registry.pending_info(name) is None
            app.state.watcher.refresh()
            assert httpx.get(f"{url}/health").json()["model_version"] == champion
    assert sum(wins.values()) == ROUNDS


def test_a_crash_between_database_and_registry_is_repaired_from_the_database(
        store, tmp_path, monkeypatch) -> None:
    name = "race-crash"
    app = _app(tmp_path, name)
    engine = app.state.engine
    v1 = _model(name, store, engine)
    v2 = _new_version(name, store)
    journal = aliases.db_journal(engine)
    registry.move_alias(name, "pending", v2, action="pending", reason="passed", actor="run r",
                        journal=journal)

    def crash(move) -> None:
        raise SystemExit("killed between the database write and the registry write")

    with monkeypatch.context() as patch:
        patch.setattr(registry, "apply_move", crash)
        with pytest.raises(SystemExit):
            aliases.approve(name, v2, journal, reason="ship it", user="ana")
    assert _champion(name) == v1 and registry.pending_info(name)["version"] == v2  # registry
    with testing.serve_in_thread(app) as url:  # start-up reconciles: the database is the intent
        assert _champion(name) == v2 and registry.pending_info(name) is None
        assert _tag(name, v2) == "approved"
        assert httpx.get(f"{url}/health").json()["model_version"] == v2
    v3 = _new_version(name, store)
    registry.move_alias(name, "pending", v3, action="pending", reason="passed", actor="run r",
                        journal=journal)
    with monkeypatch.context() as patch:
        patch.setattr(registry, "apply_move", crash)
        with pytest.raises(SystemExit):
            aliases.reject(name, v3, journal, reason="not now", user="bo")
    assert registry.pending_info(name)["version"] == v3
    move = aliases.rollback(name, journal, reason="back", user="cy")  # the next decision
    assert _tag(name, v3) == "rejected" and registry.pending_info(name) is None
    assert (move.from_version, move.to_version, _champion(name)) == (v2, v1, v1)


def test_a_decision_whose_registry_write_collides_with_a_replay_of_it_stands(
        store, tmp_path, monkeypatch) -> None:
    """Approve and reject released together: the reject won (v4 pending -> none, "reject by
    bo") while the approve's reconciliation replayed that committed move; both wrote the
    version's new approval tag, the reject's insert hit the tag's unique key, and the winner got
    a 500 although its decision was recorded. A collision with a replay of the same move is
    retried for what is still unapplied, and the decision stands."""
    from mlflow.exceptions import MlflowException

    name = "race-collide"
    engine = _app(tmp_path, name).state.engine
    _model(name, store, engine)
    journal = aliases.db_journal(engine)
    for _ in range(2):
        _new_version(name, store)
    v4 = _new_version(name, store)
    assert v4 == "4"
    registry.move_alias(name, "pending", v4, action="pending", reason="passed", actor="run r",
                        journal=journal)
    real, calls = registry.apply_move, []

    def replayed_meanwhile(move) -> None:
        calls.append(move.alias)
        if len(calls) == 1:  # the other request replays this committed move first ...
            with monkeypatch.context() as inner:
                inner.setattr(registry, "apply_move", real)
                assert [m.id for m in aliases.reconcile(engine, name, adopt=False)] == [move.id]
            # ... and this request's own write of the same new tag collides with it
            raise MlflowException("UNIQUE constraint failed: model_version_tags.workspace, "
                                  "model_version_tags.key, model_version_tags.name, "
                                  "model_version_tags.version")
        real(move)

    monkeypatch.setattr(registry, "apply_move", replayed_meanwhile)
    move = aliases.reject(name, v4, journal, reason="reject it", user="bo")
    assert (move.alias, move.from_version, move.to_version) == ("pending", v4, None)
    assert calls == ["pending"]  # the replay applied it: not written a second time
    assert registry.pending_info(name) is None and _tag(name, v4) == "rejected"
    assert aliases.reconcile(engine, name, adopt=False) == []  # nothing left unapplied

