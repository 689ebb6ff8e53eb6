"""The loop's SQL database: prediction log, feedback, monitor reports, retrain decisions.

SQLite (WAL) in the project's state folder by default, any SQLAlchemy URL by config. The schema
is declared once, by the tables below; the Alembic revisions in textloop/loop/migrations are
generated from them (`new_revision`: change a table here, generate, review, commit) and applied
at start, and a test holds the revisions and this declaration equal (alembic's check).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import sqlalchemy as sa
import tenacity
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000  # how long a SQLite statement waits for another writer's lock
INLINE_BUSY_MS = 0  # the same for a prediction-log commit on a request's thread: none
metadata = sa.MetaData()

predictions = sa.Table(
    "predictions", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    sa.Column("text_hash", sa.String(64), nullable=False, index=True),
    sa.Column("text", sa.Text(), nullable=True),  # null: serve.log_text false, or purged
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("confidence", sa.Float(), nullable=False),
    sa.Column("probas", sa.JSON(), nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),
)
feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("prediction_id", sa.String(32), nullable=True, index=True),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("source", sa.String(50), nullable=False),
    sa.Column("exported_at", sa.DateTime(), nullable=True, index=True),
    sa.Column("export_file", sa.String(500), nullable=True),
    # the task (registered model) the label is for (migration "labels"); null: stored before
    sa.Column("task", sa.String(256), nullable=True, index=True),
)
monitor_reports = sa.Table(
    "monitor_reports", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("n_predictions", sa.Integer(), nullable=False),
    sa.Column("n_feedback", sa.Integer(), nullable=False),
    sa.Column("live_accuracy", sa.Float(), nullable=True),
    sa.Column("class_psi", sa.Float(), nullable=True),
    sa.Column("oov_increase", sa.Float(), nullable=True),
    sa.Column("confidence_mean", sa.Float(), nullable=True),
    sa.Column("alerts", sa.JSON(), nullable=False),
    sa.Column("report", sa.JSON(), nullable=False),
    sa.Column("report_path", sa.String(500), nullable=True),
)
decisions = sa.Table(
    "decisions", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("trigger", sa.String(50), nullable=False),
    sa.Column("fired", sa.Boolean(), nullable=False),
    sa.Column("reasons", sa.JSON(), nullable=False),
    sa.Column("blocked", sa.JSON(), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("exported_rows", sa.Integer(), nullable=False),
    sa.Column("export_file", sa.String(500), nullable=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
)
alias_history = sa.Table(  # every move of a registry alias (revision "lineage")
    "alias_history", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("move_id", sa.String(32), nullable=False, unique=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("from_version", sa.String(32), nullable=True),
    sa.Column("to_version", sa.String(32), nullable=True),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True),
    # false while a decision is committed here but not yet written to the registry: what
    # reconciliation replays after a crash between the two writes
    sa.Column("applied", sa.Boolean(), nullable=False, server_default=sa.true()),
)
alias_state = sa.Table(  # the authority on which version holds each alias; decisions CAS on it
    "alias_state", metadata,
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("version", sa.String(32), nullable=True),  # null: the alias is unset
    sa.Column("move_id", sa.String(32), nullable=False),  # the alias_history move that set it
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)

purges = sa.Table(  # serve.retention_days: one row per purge of old raw texts
    "purges", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("retention_days", sa.Float(), nullable=False),
    sa.Column("cutoff", sa.DateTime(), nullable=False),
    sa.Column("rows_purged", sa.Integer(), nullable=False),
)
erasures = sa.Table(  # `textloop forget`: one row per erased text hash
    "erasures", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("text_hash", sa.String(64), nullable=False, index=True),
    sa.Column("predictions_removed", sa.Integer(), nullable=False),
    sa.Column("feedback_removed", sa.Integer(), nullable=False),
    sa.Column("queue_removed", sa.Integer(), nullable=False),
    sa.Column("store_rows", sa.Integer(), nullable=False),
    sa.Column("trained_versions", sa.JSON(), nullable=False),
    sa.Column("detail", sa.JSON(), nullable=False),
)
# /label answers (migration "active"): the text lives in the queue file and, once an item is
# agreed, in its feedback row (feedback_id); an answer keeps only the text's hash
label_answers = sa.Table(
    "label_answers", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("annotator", sa.String(100), nullable=False, index=True),
    sa.Column("item_id", sa.String(100), nullable=False, index=True),
    sa.Column("origin", sa.String(20), nullable=False),  # pool | traffic | suspected_error
    sa.Column("text_hash", sa.String(64), nullable=False, index=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # waiting | agreed | disagreement
    sa.Column("feedback_id", sa.Integer(), nullable=True, index=True),
    # which of the item's answers this is (0, 1, ...): unique per item, so two answers racing
    # for the last slot cannot both settle it (null: answers stored before slots existed)
    sa.Column("slot", sa.Integer(), nullable=True),
    sa.UniqueConstraint("item_id", "annotator", name="uq_label_answers_item_annotator"),
    sa.UniqueConstraint("item_id", "slot", name="uq_label_answers_item_slot"),
)
shadow_predictions = sa.Table(  # the challenger's answer to a request the champion answered
    "shadow_predictions", metadata,
    sa.Column("prediction_id", sa.String(32), primary_key=True),  # = predictions.id
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    sa.Column("champion_version", sa.String(32), nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("confidence", sa.Float(), nullable=False),
    sa.Column("probas", sa.JSON(), nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),
)
alert_deliveries = sa.Table(  # one row per event and sink: delivered or not, after how many tries
    "alert_deliveries", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("event", sa.String(50), nullable=False, index=True),
    sa.Column("sink", sa.String(500), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("ok", sa.Boolean(), nullable=False),
    sa.Column("status", sa.String(200), nullable=True),
    sa.Column("payload", sa.JSON(), nullable=False),
)
# one row per retrain the policy fired (migration "firings"): a firing claims the next number
# of its task's sequence, so two evaluations that saw the same last firing (the same evidence)
# cannot both fire; a firing whose export or start failed is deleted (nothing started)
retrain_firings = sa.Table(
    "retrain_firings", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("task", sa.String(256), nullable=False),  # "": a context without a task (tests)
    sa.Column("seq", sa.Integer(), nullable=False),  # 1 + the last firing the evaluation saw
    sa.Column("decision_id", sa.Integer(), nullable=False),
    sa.Column("trigger", sa.String(50), nullable=False),
    sa.UniqueConstraint("task", "seq", name="uq_retrain_firings_task_seq"),
)


def utcnow() -> dt.datetime:
    """Naive UTC timestamps: portable across SQLite and PostgreSQL columns without time zone."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def default_url(state: Path) -> str:
    """The default database: a SQLite file in the project's state folder."""
    from textloop.core.layout import StateLayout

    return f"sqlite:///{StateLayout(Path(state).resolve()).serve_db}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets the API write while the monitor reads. synchronous=NORMAL in WAL: a committed
    transaction survives the process dying (kill -9, OOM: what serve.log_durability promises);
    an OS crash or power cut may lose the last commits. FULL would fsync every commit (~5 ms
    measured here), which the single-text latency budget cannot pay."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.close()


def private_file(path: Path) -> None:
    """Create `path` (and its folder) readable by its owner only: it holds every served text.

    SQLite gives its -wal and -shm files the mode of the database file, so they follow. An
    existing file with wider permissions is narrowed to 0600 (and logged)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        mode = stat.S_IMODE(file.stat().st_mode) if file.exists() else 0
        if mode & 0o077:
            log.warning("%s was mode %o; narrowing it to 0600", file, mode)
            file.chmod(0o600)


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL and a busy timeout, and are created 0600."""
    if url.startswith("sqlite"):
        db_path = sa.engine.make_url(url).database
        if db_path and db_path != ":memory:":
            private_file(Path(db_path))
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                  json_serializer=_json)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, json_serializer=_json)


def _json(obj: Any) -> str:
    """JSON columns via orjson: the prediction log writes thousands of rows a second."""
    return orjson.dumps(obj, default=str).decode()


def alembic_config(engine: Engine, directory: Path = MIGRATIONS,
                   target: sa.MetaData = metadata) -> Config:
    """An Alembic config pointing at the migrations shipped inside the package (`directory`,
    `target`: another folder and declaration, for tests of the generation itself)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(directory))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["metadata"] = target
    return cfg


def new_revision(message: str, directory: Path = MIGRATIONS,
                 target: sa.MetaData = metadata) -> Path:
    """Generate the next revision from the declared tables (alembic autogenerate against an
    in-memory database built by the existing revisions): how the schema changes, so no
    revision retypes it by hand. Returns the new file, to review and commit."""
    engine = sa.create_engine("sqlite://")
    cfg = alembic_config(engine, directory, target)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        script = command.revision(cfg, message, autogenerate=True)
    if script is None or isinstance(script, list):
        raise RuntimeError("alembic generated no single revision")
    return Path(script.path)


def migrate(engine: Engine, directory: Path = MIGRATIONS) -> None:
    """Bring the schema to the newest revision; idempotent, safe to call at every start. A
    concurrent first start that created the tables meanwhile (OperationalError) is retried."""
    cfg = alembic_config(engine, directory)
    for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_attempt(3), reraise=True,
            retry=tenacity.retry_if_exception_type(sa.exc.OperationalError),
            before_sleep=lambda _: log.warning("migration raced another process; retrying")):
        with attempt, engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def open_db(url: str) -> Engine:
    """Engine + up-to-date schema: what every reader and writer of the loop starts with."""
    engine = make_engine(url)
    migrate(engine)
    return engine


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class LogWriteError(RuntimeError):
    """Prediction-log rows could not be committed (after retries); their answer must not leave."""


class PredictionLog:
    """A background writer with group commit: requests enqueue rows, one thread inserts them.

    `put(rows)` returns a Future resolved once the rows are committed (or failed). Durability
    `commit`: the writer takes whatever queued up while the previous transaction ran and commits
    it at once (no waiting), and callers await the future before answering, so an answer never
    leaves before its rows are stored; throughput stays because concurrent requests share one
    transaction. `async`: callers do not wait; rows are gathered for up to `flush_s` (or `batch`
    rows) and a crash loses at most that window.

    `commit` on a local SQLite file, with the writer idle and nothing queued (a sequential
    client): the caller commits its own rows on its own thread instead, the same transaction
    without the two thread hand-offs. It never waits there (the caller may be the event loop):
    when another connection holds SQLite's write lock (the shadow scorer, a monitor, a purge)
    the rows go to the writer thread at once, which waits and retries as before.
    """

    def __init__(self, engine: Engine, batch: int = 2000, flush_s: float = 0.2,
                 durability: str = "commit"):
        if durability not in ("commit", "async"):
            raise ValueError(f"durability must be 'commit' or 'async', not {durability!r}")
        self.engine, self.batch, self.flush_s = engine, batch, flush_s
        self.durable = durability == "commit"
        self.queue: queue.Queue[tuple[list[dict], Future[None]] | threading.Event | None] = (
            queue.Queue())
        self.written = 0
        self.failed = 0
        self.busy_since: float | None = None  # monotonic start of the write under way, if any
        self._inline = self.durable and engine.dialect.name == "sqlite"
        self._writing = threading.Lock()  # held by whoever runs a log transaction
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self) -> PredictionLog:
        """Start the writer thread."""
        self._thread.start()
        return self

    def put(self, rows: list[dict]) -> Future[None]:
        """Enqueue rows; the future resolves when they are committed (LogWriteError if not).

        The future is marked running at once, so a request cancelled while it waits (client
        gone) cannot cancel it: the rows are written anyway and the writer never trips."""
        done: Future[None] = Future()
        done.set_running_or_notify_cancel()
        if self._commit_inline(rows):
            done.set_result(None)
        else:
            self.queue.put((rows, done))
        return done

    def _commit_inline(self, rows: list[dict]) -> bool:
        """Commit rows on the caller's thread when that cannot delay anyone (see the class doc):
        True when they are stored; False leaves them to the writer thread, which retries."""
        if not (self._inline and self.queue.empty() and self._thread.is_alive()
                and self._writing.acquire(blocking=False)):
            return False
        try:
            self._insert(rows, busy_ms=INLINE_BUSY_MS)
            self.written += len(rows)
            return True
        except (sa.exc.SQLAlchemyError, sqlite3.Error):
            log.debug("inline prediction-log commit failed; the writer takes it", exc_info=True)
            return False
        finally:
            self._writing.release()

    def stalled_for(self) -> float:
        """Seconds the write under way has waited (a database held locked by another process);
        0 when the writer is idle."""
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything enqueued before this call is committed."""
        done = threading.Event()
        self.queue.put(done)
        return done.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, then end the thread."""
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        """Collect a batch, write it in one transaction, resolve its futures; until stopped."""
        stop = False
        while not stop:
            items, events, stop = self._collect()
            if items:
                with self._writing:
                    self.busy_since = time.monotonic()
                    try:
                        ok = self._write([r for rows, _ in items for r in rows])
                    finally:
                        self.busy_since = None
                self._settle(items, ok)
            for event in events:
                event.set()

    def _collect(self) -> tuple[list[tuple[list[dict], Future[None]]], list[threading.Event], bool]:
        """Drain the queue into one batch; markers (flush events, stop) end the batch early.

        commit: block for the first item, then take only what is already queued;
        async: keep gathering until flush_s has passed or `batch` rows are in."""
        items: list[tuple[list[dict], Future[None]]] = []
        events: list[threading.Event] = []
        n_rows, deadline = 0, time.monotonic() + self.flush_s
        while n_rows < self.batch:
            try:
                if self.durable:
                    item = self.queue.get() if not items else self.queue.get_nowait()
                else:
                    item = self.queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                break
            if item is None:
                return items, events, True
            if isinstance(item, threading.Event):
                events.append(item)
                break
            items.append(item)
            n_rows += len(item[0])
        return items, events, False

    @staticmethod
    def _settle(items: list[tuple[list[dict], Future[None]]], ok: bool) -> None:
        """Tell every waiting request whether its rows are stored."""
        for _, done in items:
            if ok:
                done.set_result(None)
            else:
                done.set_exception(LogWriteError("the prediction log could not be written"))

    def _insert(self, rows: list[dict], busy_ms: int | None = None) -> None:
        """Insert rows in one transaction. busy_ms (SQLite): how long this one waits for another
        writer's lock instead of the connection's BUSY_TIMEOUT_MS."""
        with self.engine.begin() as conn:
            if busy_ms is None:
                conn.execute(predictions.insert(), rows)
                return
            sqlite = conn.connection.dbapi_connection  # the lock is taken by the insert
            sqlite.execute(f"PRAGMA busy_timeout={busy_ms}")
            try:
                conn.execute(predictions.insert(), rows)
            finally:
                sqlite.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _write(self, rows: list[dict]) -> bool:
        """Insert a batch; retry briefly on a locked database (waits 0.2, 0.4, ... s), count
        what could not be written. Other database errors (constraint, encoding) are final."""
        try:
            for attempt in tenacity.Retrying(
                    stop=tenacity.stop_after_attempt(5), reraise=True,
                    wait=tenacity.wait_incrementing(start=0.2, increment=0.2),
                    retry=tenacity.retry_if_exception_type(sa.exc.OperationalError),
                    before_sleep=_log_write_retry):
                with attempt:
                    self._insert(rows)
            self.written += len(rows)
            return True
        except sa.exc.SQLAlchemyError:
            log.exception("prediction log write failed")
        self.failed += len(rows)
        log.error("could not write %d prediction-log rows", len(rows))
        return False


def _log_write_retry(state: tenacity.RetryCallState) -> None:
    """A failed prediction-log write that will be retried: logged with its error."""
    log.warning("prediction log write failed (attempt %d): %s", state.attempt_number,
                state.outcome.exception() if state.outcome else "?")


def texts_of_predictions(engine: Engine, ids: Iterable[str]) -> dict[str, str]:
    """Prediction id -> input text, for feedback that names a prediction (a prediction whose
    text is not kept, serve.log_text or retention, is left out)."""
    ids = list(set(ids))
    if not ids:
        return {}
    query = sa.select(predictions.c.id, predictions.c.text).where(
        predictions.c.id.in_(ids), predictions.c.text.is_not(None))
    with engine.connect() as conn:
        return dict(conn.execute(query).all())


def insert_feedback(engine: Engine, rows: list[dict]) -> list[int]:
    """Store feedback rows (text, label, prediction_id, source); returns their ids."""
    now = utcnow()
    with engine.begin() as conn:
        result = conn.execute(feedback.insert().returning(feedback.c.id),
                              [{"created_at": now, **row} for row in rows])
        return [r[0] for r in result]


def read_predictions(engine: Engine, limit: int, model_version: str | None = None,
                     oldest_first: bool = False) -> pd.DataFrame:
    """The most recent (or, for a baseline, the first) `limit` predictions."""
    order = predictions.c.created_at.asc() if oldest_first else predictions.c.created_at.desc()
    query = sa.select(predictions).order_by(order).limit(limit)
    if model_version is not None:
        query = query.where(predictions.c.model_version == str(model_version))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(),
                            columns=[c.name for c in predictions.columns])


def read_labeled(engine: Engine, limit: int) -> pd.DataFrame:
    """Recent predictions that received feedback, with the latest true label of each."""
    latest = (sa.select(feedback.c.prediction_id, sa.func.max(feedback.c.id).label("fid"))
              .where(feedback.c.prediction_id.is_not(None))
              .group_by(feedback.c.prediction_id).subquery())
    query = (sa.select(predictions.c.id, predictions.c.created_at, predictions.c.model_version,
                       predictions.c.label, predictions.c.confidence,
                       feedback.c.label.label("true_label"))
             .join(latest, latest.c.prediction_id == predictions.c.id)
             .join(feedback, feedback.c.id == latest.c.fid)
             .order_by(predictions.c.created_at.desc()).limit(limit))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(),
                            columns=["id", "created_at", "model_version", "label", "confidence",
                                     "true_label"])


def pending_feedback(engine: Engine) -> pd.DataFrame:
    """Feedback rows not yet exported to the DVC feedback store, oldest first (every answer:
    repeated answers on one text are settled by tasks.feedback.settle)."""
    query = (sa.select(feedback.c.id, feedback.c.text, feedback.c.label, feedback.c.prediction_id,
                       feedback.c.source, feedback.c.task)
             .where(feedback.c.exported_at.is_(None)).order_by(feedback.c.id))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(),
                            columns=["id", "text", "label", "prediction_id", "source", "task"])


def settled_feedback(engine: Engine) -> pd.DataFrame:
    """The pending feedback as labels: one per task and text, the last answer winning (every
    answer stays in the table for audit); texts blanked by the retention purge left out."""
    from tasks.feedback import settle

    return settle(pending_feedback(engine)).reset_index(drop=True)


def mark_exported(engine: Engine, ids: list[int], export_file: str) -> int:
    """Mark rows exported (only those still pending), so no row is exported twice."""
    if not ids:
        return 0
    query = (feedback.update().where(feedback.c.id.in_(ids), feedback.c.exported_at.is_(None))
             .values(exported_at=utcnow(), export_file=export_file))
    with engine.begin() as conn:
        return conn.execute(query).rowcount


def insert_row(engine: Engine, table: sa.Table, row: dict) -> int:
    """Insert one row (monitor report, decision) stamped now; returns its id."""
    with engine.begin() as conn:
        result = conn.execute(table.insert().values(created_at=utcnow(), **row))
        return int(result.inserted_primary_key[0])


def recent_rows(engine: Engine, table: sa.Table, limit: int = 50) -> list[dict]:
    """The newest rows of a table, oldest first (for charts and tables)."""
    query = sa.select(table).order_by(table.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings().all()]
    return rows[::-1]


def last_fired_at(engine: Engine) -> dt.datetime | None:
    """When the retrain policy (or a person) last started a retrain."""
    query = sa.select(sa.func.max(decisions.c.created_at)).where(decisions.c.fired.is_(True))
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def counts(engine: Engine) -> dict[str, int]:
    """Row counts the dashboard shows: predictions, feedback, feedback not yet exported."""
    with engine.connect() as conn:
        n_pred = conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar()
        n_fb = conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar()
        n_pending = conn.execute(sa.select(sa.func.count()).select_from(feedback)
                                 .where(feedback.c.exported_at.is_(None))).scalar()
    return {"predictions": int(n_pred), "feedback": int(n_fb), "feedback_pending": int(n_pending)}


def insert_shadow(engine: Engine, rows: list[dict]) -> None:
    """Store the challenger's predictions (one per served prediction id)."""
    if rows:
        with engine.begin() as conn:
            conn.execute(shadow_predictions.insert(), rows)


def read_shadow_pairs(engine: Engine, champion: str, challenger: str, limit: int
                      ) -> pd.DataFrame:
    """The newest `limit` requests both versions scored (champion = the served prediction,
    challenger = its shadow row), with the latest feedback label of each (None without).
    Columns: id, champion_label, champion_confidence, challenger_label,
    challenger_confidence, true_label."""
    sp = shadow_predictions
    latest = (sa.select(feedback.c.prediction_id, sa.func.max(feedback.c.id).label("fid"))
              .where(feedback.c.prediction_id.is_not(None))
              .group_by(feedback.c.prediction_id).subquery())
    query = (sa.select(predictions.c.id, predictions.c.label.label("champion_label"),
                       predictions.c.confidence.label("champion_confidence"),
                       sp.c.label.label("challenger_label"),
                       sp.c.confidence.label("challenger_confidence"),
                       feedback.c.label.label("true_label"))
             .join(sp, sp.c.prediction_id == predictions.c.id)
             .outerjoin(latest, latest.c.prediction_id == predictions.c.id)
             .outerjoin(feedback, feedback.c.id == latest.c.fid)
             .where(predictions.c.model_version == str(champion),
                    sp.c.model_version == str(challenger))
             .order_by(predictions.c.created_at.desc()).limit(limit))
    cols = ["id", "champion_label", "champion_confidence", "challenger_label",
            "challenger_confidence", "true_label"]
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=cols)
