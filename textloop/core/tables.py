"""Reading and writing user tables (CSV/TSV/Parquet/JSONL) with deliberate encoding handling."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pandas as pd

from textloop.core.errors import UserError, where

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_SURROGATE_LO, _SURROGATE_HI = "\udc80", "\udcff"


def table_format(path: Path) -> str:
    """The format implied by a file's suffix; unknown suffixes are a user error."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r} "
                        f"(use one of {', '.join(sorted(FORMATS))})")
    return fmt


def read_table(path: Path, encoding: str = "auto") -> tuple[pd.DataFrame, pd.Series]:
    """Read a table as strings; return it plus a per-row flag 'bytes were not valid UTF-8'."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    fmt = table_format(path)
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
        return df, pd.Series(False, index=df.index)
    text = decode_bytes(path.read_bytes(), encoding, path)
    df = _parse_text(text, fmt, path)
    return repair_surrogates(df, encoding, path)


def decode_bytes(data: bytes, encoding: str, path: Path) -> str:
    """Decode a file; 'auto' keeps undecodable bytes as surrogates so rows can be counted."""
    if encoding == "auto":
        return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    try:
        return data.decode(encoding).removeprefix("\ufeff")
    except LookupError as exc:
        raise UserError(f"{path}: unknown encoding {encoding!r}") from exc
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: bytes not valid {encoding} ({exc.reason}); "
                        "set ingest.encoding: auto to read them as latin-1 and count them") from exc


def _parse_text(text: str, fmt: str, path: Path) -> pd.DataFrame:
    """Parse decoded CSV/TSV/JSONL text, every cell kept as a string."""
    try:
        if fmt == "jsonl":
            return parse_jsonl(text, path)
        # The C parser on UTF-8 bytes; escaped (non-UTF-8) bytes round-trip as surrogates.
        data = io.BytesIO(text.encode("utf-8", errors="surrogateescape"))
        return pd.read_csv(data, sep="\t" if fmt == "tsv" else ",", dtype=object,
                           keep_default_na=False, na_values=[""], encoding="utf-8",
                           encoding_errors="surrogateescape")
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: not valid {fmt.upper()}: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise UserError(f"{path}: file is empty") from exc


def parse_jsonl(text: str, path: Path) -> pd.DataFrame:
    """One JSON object per line; a bad line is an error naming its row."""
    records = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where(path, i)}: not valid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict):
            raise UserError(f"{where(path, i)}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    if not records:
        raise UserError(f"{path}: file is empty")
    return pd.DataFrame.from_records(records).astype(object)


def _has_surrogate(value: object) -> bool:
    return isinstance(value, str) and any(_SURROGATE_LO <= ch <= _SURROGATE_HI for ch in value)


def _fix(value: object) -> object:
    """Turn each escaped byte back into a character by reading it as latin-1."""
    if not _has_surrogate(value):
        return value
    return "".join(chr(ord(c) - 0xDC00) if _SURROGATE_LO <= c <= _SURROGATE_HI else c for c in value)


def repair_surrogates(df: pd.DataFrame, encoding: str, path: Path) -> tuple[pd.DataFrame, pd.Series]:
    """Count rows holding non-UTF-8 bytes and decode those bytes as latin-1 (reported, not hidden)."""
    flags = pd.Series(False, index=df.index)
    for col in df.columns:
        bad = df[col].map(_has_surrogate).astype(bool)
        if bad.any():
            df[col] = df[col].map(_fix)
            flags |= bad
    if flags.any():
        log.warning("%s: %d rows had bytes that are not valid UTF-8; read them as latin-1",
                    path, int(flags.sum()))
    return df, flags


def write_table(df: pd.DataFrame, path: Path | None) -> None:
    """Write a frame in the format of its path's suffix; None means JSONL to stdout."""
    if path is None:
        import sys

        sys.stdout.write(df.to_json(orient="records", lines=True, force_ascii=False))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = table_format(path)
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        df.to_csv(path, index=False, sep="\t" if fmt == "tsv" else ",")
