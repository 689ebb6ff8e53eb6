"""An exclusive lock that dies with its holder, for the DVC workspace and the retrain policy.

The lock is an OS-level lock (`flock`, through the `filelock` package) on a file in the state
folder: the kernel drops it when the holding process dies, even by SIGKILL, so a crashed holder
never blocks the next acquirer. Beside it a JSON holder record says who holds it (pid, host,
started_at, command, plus what the caller adds: flow run id, MLflow run id). A clean release
deletes the record, so a record found by the next acquirer is the trace of a holder that died:
`acquire` returns it, and the caller can mark that run crashed.

Across machines (the team profile) the same lock also takes a PostgreSQL session advisory lock
(`SharedLock`) on a dedicated connection held for the holder's life: the server drops it when
that connection closes, so a killed holder on any machine frees it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from filelock import FileLock, Timeout

from textloop.core.errors import UserError

log = logging.getLogger(__name__)


class LockTimeout(UserError, TimeoutError):
    """A live holder kept the lock past the timeout; the message names it and since when."""


def describe(record: dict[str, Any] | None) -> str:
    """'pid 123 on host (flow run X) since T' for messages; tolerant of partial records."""
    if not record:
        return "an unknown holder (no holder record yet)"
    text = f"pid {record.get('pid', '?')} on {record.get('host', '?')}"
    if record.get("flow_run_id"):
        text += f" (flow run {record['flow_run_id']})"
    return f"{text} since {record.get('started_at', '?')}"


def read_record(path: Path) -> dict[str, Any] | None:
    """A holder record, None when absent; an unreadable one is returned as its raw text."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return dict(json.loads(text))
    except (ValueError, TypeError):
        return {"unreadable_record": text[:500]}


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file + rename: a reader never sees half a record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


class SharedLock:
    """A PostgreSQL session advisory lock (`pg_try_advisory_lock`) on its own connection: held
    until `release` or until the connection dies with its process (any machine).

    url: a libpq URL (password from PGPASSWORD / the environment, never in it). name: the lock's
    team-wide name; its key is the first 8 bytes of sha256(name) as a signed bigint. The holding
    connection's application_name carries a short description of the holder (pg_stat_activity),
    which `holder` returns to any machine.
    """

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None

    def try_acquire(self, label: str) -> bool:
        """One try; True when we hold it now (the connection stays open), False when another
        session holds it. Raises psycopg.OperationalError when the server is unreachable."""
        import psycopg

        if self._conn is not None:
            return True
        conn = psycopg.connect(self.url, autocommit=True, application_name=label[:63],
                               connect_timeout=10, keepalives=1, keepalives_idle=30,
                               keepalives_interval=10, keepalives_count=3)  # idle for a long run
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
        if got:
            self._conn = conn
        else:
            conn.close()
        return bool(got)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (its connection is open)."""
        return self._conn is not None and not self._conn.closed

    def release(self) -> None:
        """Unlock and close the connection (closing alone would free it too)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except Exception:  # noqa: BLE001 - a broken connection has released it already
            log.debug("advisory unlock of %s failed; closing the connection", self.name)
        finally:
            conn.close()

    def holder(self) -> str | None:
        """The live holder's application_name ('' if unnamed), None when nobody holds it."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                (self.key,)).fetchone()
        return None if row is None else str(row[0] or "")


class HolderLock:
    """One exclusive, crash-safe lock with a holder record (used as a context manager too).

    path: the lock file (its folder is created); the record is `<path stem>.holder.json` beside
    it. what: a name for messages ("workspace"). timeout_s: how long `acquire` waits for a live
    holder before raising LockTimeout (0: fail at once). notify: called once with the waiting
    message (default: a warning on this module's logger). shared: a SharedLock taken after the
    OS lock (team profile: the holder may be on another machine); None keeps it machine-local.
    """

    def __init__(self, path: Path, what: str, timeout_s: float, poll_s: float = 0.1,
                 notify: Callable[[str], None] | None = None,
                 shared: SharedLock | None = None) -> None:
        self.shared = shared
        self.path = Path(path)
        self.record_path = self.path.with_name(f"{self.path.stem}.holder.json")
        self.what = what
        self.timeout_s = float(timeout_s)
        self.poll_s = poll_s
        self.notify = notify or log.warning
        self.stale: dict[str, Any] | None = None
        self.record: dict[str, Any] = {}
        self._lock = self._file_lock()

    def _file_lock(self) -> FileLock:
        """The OS lock; the file stays in place on release (no unlink races between waiters)."""
        return FileLock(self.path, thread_local=False, preserve_lock_file=True)

    def acquire(self, **info: Any) -> dict[str, Any] | None:
        """Take the lock, waiting at most timeout_s for a live holder, then write our record
        (pid, host, started_at, command, **info). Returns the record a dead holder left behind
        (also kept in `self.stale`), or None. Raises LockTimeout naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        self._wait()
        try:
            if self.shared is not None:
                self._wait_shared(start, info)
            self.stale = read_record(self.record_path)
            if self.stale is not None:
                log.warning("%s: the previous holder, %s, died without releasing it; taking over",
                            self.what, describe(self.stale))
            self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                           "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "command": " ".join(sys.argv), **info}
            write_json_atomic(self.record_path, self.record)
        except BaseException:
            if self.shared is not None:
                self.shared.release()
            self._lock.release()
            raise
        return self.stale

    def _wait_shared(self, start: float, info: dict[str, Any]) -> None:
        """Take the shared lock within what is left of timeout_s (polling every poll_s, at
        least 0.5 s: each try is a new connection); raises LockTimeout naming the holder."""
        assert self.shared is not None
        label = f"textloop {self.what} " + str(info.get("flow_run_id") or
                                               f"pid {os.getpid()}@{socket.gethostname()}")
        told = False
        while not self._try_shared(label):
            if time.monotonic() - start >= self.timeout_s:
                raise LockTimeout(f"{self.what} held by {self.shared.holder() or 'another host'}"
                                  f" (PostgreSQL advisory lock {self.shared.name!r}); gave up "
                                  f"after {time.monotonic() - start:.1f} s")
            if not told:
                self.notify(f"{self.what} held by {self.shared.holder() or 'another host'} "
                            f"(another machine); waiting up to {self.timeout_s:g} s…")
                told = True
            time.sleep(max(self.poll_s, 0.5))

    def _wait(self) -> None:
        """One try at once; if held, say once who holds it and since when, then poll."""
        try:
            self._lock.acquire(blocking=False)
            return
        except Timeout:
            pass
        holder = read_record(self.record_path)
        self.notify(f"{self.what} held by {describe(holder)}; waiting up to "
                    f"{self.timeout_s:g} s…")
        start = time.monotonic()
        try:
            self._lock.acquire(timeout=self.timeout_s, poll_interval=self.poll_s)
        except Timeout:
            holder = read_record(self.record_path) or holder
            raise LockTimeout(f"{self.what} held by {describe(holder)}; gave up after "
                              f"{time.monotonic() - start:.1f} s (lock {self.path})") from None

    def _try_shared(self, label: str) -> bool:
        """One try at the shared lock; an unreachable team database is a UserError (one line)."""
        import psycopg

        assert self.shared is not None
        try:
            return self.shared.try_acquire(label)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{self.what}: the team database holding its lock is unreachable "
                            f"({first}); check backend.db_url and PGPASSWORD") from None

    def update(self, **fields: Any) -> None:
        """Add fields to our holder record (e.g. the MLflow run id once known)."""
        if not self._lock.is_locked:
            raise RuntimeError(f"{self.what}: update() without holding the lock")
        self.record.update(fields)
        write_json_atomic(self.record_path, self.record)

    def release(self) -> None:
        """Delete our record, then drop the OS lock (a crash in between leaves no false trace)."""
        if not self._lock.is_locked:
            return
        try:
            self.record_path.unlink(missing_ok=True)
        finally:
            try:
                if self.shared is not None:
                    self.shared.release()
            finally:
                self._lock.release()

    def holder(self) -> dict[str, Any] | None:
        """The live holder's record ({} if it has not written one yet), or None when the lock
        is free; a record left by a dead holder does not count. Probes with a second OS lock."""
        probe = self._file_lock()
        try:
            probe.acquire(blocking=False)
        except Timeout:
            return read_record(self.record_path) or {}
        except FileNotFoundError:  # no state folder yet: nobody ever held it
            probe = None
        if probe is not None:
            probe.release()
        if self.shared is not None and not self.shared.held:
            label = self.shared.holder()
            if label is not None:
                return {"holder": label, "host": "another machine"}
        return None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
