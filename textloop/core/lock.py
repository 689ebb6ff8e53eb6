"""An exclusive lock that dies with its holder, for the DVC workspace and the retrain policy.

The lock is an OS-level lock (`flock`, through the `filelock` package) on a file in the state
folder: the kernel drops it when the holding process dies, even by SIGKILL, so a crashed holder
never blocks the next acquirer. Beside it a JSON holder record says who holds it (pid, host,
started_at, command, plus what the caller adds: flow run id, MLflow run id). A clean release
deletes the record, so a record found by the next acquirer is the trace of a holder that died:
`acquire` returns it, and the caller can mark that run crashed.
"""

from __future__ import annotations

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


class HolderLock:
    """One exclusive, crash-safe lock with a holder record (used as a context manager too).

    path: the lock file (its folder is created); the record is `<path stem>.holder.json` beside
    it. what: a name for messages ("workspace"). timeout_s: how long `acquire` waits for a live
    holder before raising LockTimeout (0: fail at once). notify: called once with the waiting
    message (default: a warning on this module's logger).
    """

    def __init__(self, path: Path, what: str, timeout_s: float, poll_s: float = 0.1,
                 notify: Callable[[str], None] | None = None) -> None:
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
        self._wait()
        try:
            self.stale = read_record(self.record_path)
            if self.stale is not None:
                log.warning("%s: the previous holder, %s, died without releasing it; taking over",
                            self.what, describe(self.stale))
            self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                           "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "command": " ".join(sys.argv), **info}
            write_json_atomic(self.record_path, self.record)
        except BaseException:
            self._lock.release()
            raise
        return self.stale

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
            return None
        probe.release()
        return None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
