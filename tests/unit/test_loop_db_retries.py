"""The loop database's retries: a prediction-log write that finds the database locked is
retried with growing waits and then stored; one that keeps failing is counted, not lost
silently; a non-transient error is not retried."""

from __future__ import annotations

import sqlalchemy as sa

from textloop.loop import db


def _row(pid: str) -> dict:
    return {"id": pid, "created_at": db.utcnow(), "model_name": "m", "model_version": "1",
            "text_hash": "0" * 64, "text": "t", "label": "pos", "confidence": 0.9,
            "probas": {"pos": 0.9, "neg": 0.1}, "latency_ms": 1.0}


class _LockedFor:
    """An engine whose first `n` transactions fail as SQLite does on a locked database."""

    def __init__(self, engine: sa.Engine, n: int) -> None:
        self.engine, self.left, self.calls = engine, n, 0

    def begin(self):
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return self.engine.begin()


def test_a_write_that_finds_the_database_locked_twice_is_retried_and_stored(tmp_path):
    engine = db.open_db(db.default_url(tmp_path))
    locked = _LockedFor(engine, 2)
    plog = db.PredictionLog(engine)
    plog.engine = locked
    assert plog._write([_row("a")]) is True
    assert locked.calls == 3 and (plog.written, plog.failed) == (1, 0)
    assert db.counts(engine)["predictions"] == 1


def test_a_write_locked_on_every_attempt_is_counted_as_failed_after_five(tmp_path):
    engine = db.open_db(db.default_url(tmp_path))
    locked = _LockedFor(engine, 99)
    plog = db.PredictionLog(engine)
    plog.engine = locked
    assert plog._write([_row("a"), _row("b")]) is False
    assert locked.calls == 5 and (plog.written, plog.failed) == (0, 2)


def test_a_constraint_error_is_not_retried(tmp_path):
    engine = db.open_db(db.default_url(tmp_path))
    plog = db.PredictionLog(engine)
    assert plog._write([_row("same")]) is True
    counting = _LockedFor(engine, 0)
    plog.engine = counting
    assert plog._write([_row("same")]) is False
    assert counting.calls == 1 and (plog.written, plog.failed) == (1, 1)


def test_migrating_twice_is_a_no_op(tmp_path):
    engine = db.open_db(db.default_url(tmp_path))
    before = db.current_revision(engine)
    db.migrate(engine)
    assert db.current_revision(engine) == before is not None
