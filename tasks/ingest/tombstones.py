"""privacy: the tombstone list of erased texts (`textloop forget`) and the rule ingest applies.

Feedback batches and earlier snapshots are append-only and versioned, so an erased text is not
cut out of them: its hash goes into a tombstone list (a DVC-versioned folder, paths.tombstones)
and ingest drops every row whose text hash is listed (counted as quarantine reason `erased`;
no file keeps the row). Hashes are textloop.core.text.text_hash (sha256 of the normalised text).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from textloop.core.text import text_hash

log = logging.getLogger(__name__)

TOMBSTONE_FILE = "tombstones.csv"
TOMBSTONE_COLUMNS = ["text_hash", "erased_at"]
ERASED = "erased"  # the quarantine reason of rows dropped by a tombstone


def read_tombstones(folder: Path) -> pd.DataFrame:
    """Every tombstone (text_hash, erased_at), oldest first; none when the list does not exist."""
    path = Path(folder) / TOMBSTONE_FILE
    if not path.is_file():
        return pd.DataFrame(columns=TOMBSTONE_COLUMNS)
    return pd.read_csv(path, dtype=str)[TOMBSTONE_COLUMNS]


def add_tombstones(folder: Path, hashes: Iterable[str], when: datetime | None = None) -> int:
    """Append hashes not yet listed (written atomically); returns how many were new."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = read_tombstones(folder)
    new = sorted(set(hashes) - set(old["text_hash"]))
    if new:
        stamp = (when or datetime.now(UTC)).isoformat()
        rows = pd.DataFrame({"text_hash": new, "erased_at": stamp})
        tmp = folder / f".{TOMBSTONE_FILE}.tmp"
        pd.concat([old, rows], ignore_index=True).to_csv(tmp, index=False)
        tmp.replace(folder / TOMBSTONE_FILE)
        log.info("tombstones: %d new hash(es) in %s", len(new), folder / TOMBSTONE_FILE)
    return len(new)


def apply_tombstones(raw: pd.DataFrame, hashes: Collection[str]) -> tuple[pd.DataFrame, dict]:
    """Drop rows whose text hash is a tombstone; returns the kept rows and the counts
    (rows_read == rows_kept + rows_erased, erased per source). No text of a dropped row is kept."""
    if not len(hashes) or raw.empty:
        erased = pd.Series(False, index=raw.index)
    else:
        erased = raw["text"].map(text_hash).isin(set(hashes))
    by_source = raw.loc[erased, "source"].astype(str).value_counts().to_dict()
    report = {"rows_read": len(raw), "rows_kept": int((~erased).sum()),
              "rows_erased": int(erased.sum()),
              "quarantined_by_reason": {ERASED: int(erased.sum())} if erased.any() else {},
              "erased_by_source": {str(k): int(v) for k, v in by_source.items()}}
    if report["rows_kept"] + report["rows_erased"] != report["rows_read"]:
        raise AssertionError(f"tombstones lost rows: {report}")
    return raw[~erased].reset_index(drop=True), report
