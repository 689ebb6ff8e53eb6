"""Reading and writing user tables (CSV/TSV/Parquet/JSONL).

A file is read once: the same bytes are hashed (the lineage digest) and parsed, so what is
fingerprinted is what was trained on. Encodings are detected, not guessed silently: valid UTF-8
is read as such; bytes that are not are decoded with the first of `FALLBACKS` that can decode
them all, per file, and every row holding such bytes is counted. Any parse failure is one
`UserError` line naming the file (and the line where the parser knows it).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from textloop.core.errors import UserError, where

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
# Single-byte code pages tried, in order, for bytes that are not UTF-8: Windows-1252 first (what
# Excel and most Windows tools write: curly quotes, dashes, €), latin-1 last (it decodes anything).
FALLBACKS = ("cp1252", "latin-1")
SAMPLE = 1 << 16  # bytes looked at for binary content, delimiter sniffing, encoding detection
DELIMITERS = ",;\t|"
MIN_DETECT_LETTERS = 10  # non-ASCII letters needed before a non-Latin codec is believed
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13))
_LINE = re.compile(r"line (\d+)")
_BARE_CR = re.compile(r"\r(?!\n)")  # a carriage return that does not start a CRLF
_ESCAPED = re.compile("[\udc80-\udcff]")  # surrogateescape: byte b (>= 0x80) is U+DC00 + b
_VALID_NON_ASCII = re.compile("[^\x00-\x7f\udc80-\udcff]")


@dataclass
class TableRead:
    """One file as read: its rows, which rows needed an encoding repair, and how it was read."""

    frame: pd.DataFrame
    repaired: pd.Series      # per row: held bytes that are not valid UTF-8 (decoded by `encoding`)
    encoding: str            # utf-8 | utf-8+cp1252 | utf-8+latin-1 | a detected/configured codec
    digest: str              # md5 of exactly the bytes parsed
    delimiter: str | None    # CSV/TSV only


def table_format(path: Path) -> str:
    """The format implied by a file's suffix; unknown suffixes are a user error."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r} "
                        f"(use one of {', '.join(sorted(FORMATS))})")
    return fmt


def digest_bytes(data: bytes) -> str:
    """The lineage digest of a file's bytes (md5, as DVC uses)."""
    return hashlib.md5(data).hexdigest()


def file_digest(path: Path) -> str:
    """digest_bytes of a file read in 1 MiB blocks, without the whole file in memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def read_bytes(path: Path) -> bytes:
    """A file's bytes; a missing or unreadable file is a user error."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"{path}: file not found") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def load_table(path: Path, encoding: str = "auto") -> TableRead:
    """Read a table once; return rows (text columns as strings), repairs, encoding and digest.

    Raises UserError for a missing, binary, undecodable or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    fmt = table_format(path)
    data = read_bytes(path)
    digest = digest_bytes(data)
    if fmt == "parquet":
        df = _read_parquet(data, path)
        return TableRead(df, pd.Series(False, index=df.index), "parquet", digest, None)
    check_text_bytes(data, path)
    text, codec = decode_text(data, encoding, path)
    table = escape_table(codec.split("+", 1)[1]) if "+" in codec else None
    if fmt == "jsonl":  # escapes decoded per line: pandas str columns cannot hold them
        df, repaired = jsonl_frame(text, path, table)
        delimiter = None
        if table is None:
            repaired = _repair(df, codec, detected=encoding == "auto")
    else:
        df, delimiter = _parse_delimited(text, fmt, path)
        repaired = _repair(df, codec, detected=encoding == "auto")
    if repaired.any():
        log.warning("%s: %d rows had bytes that are not valid UTF-8; decoded them as %s",
                    path, int(repaired.sum()), codec.split("+")[-1])
    return TableRead(df, repaired, codec, digest, delimiter)



def iter_table(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """The table load_table reads (same columns, same cells), as frames of at most `rows` rows
    with one frame in memory at a time: Parquet by row batch, UTF-8 CSV/TSV through pandas'
    chunked reader with the delimiter and header decided on the first lines as load_table
    decides them, JSONL by lines with its keys collected in a first pass. A file that is not
    plain UTF-8 (its codec is decided on all its bytes) is read whole, then sliced."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    fmt = table_format(path)
    if fmt == "parquet":
        yield from _parquet_chunks(path, rows)
    elif not _plain_utf8(path):
        frame = load_table(path).frame
        for start in range(0, max(len(frame), 1), rows):
            yield frame.iloc[start:start + rows].reset_index(drop=True)
    elif fmt == "jsonl":
        yield from _jsonl_chunks(path, rows)
    else:
        yield from _delimited_chunks(path, fmt, rows)


def _parquet_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """A Parquet file by row batches, converted as pd.read_parquet converts it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pandas.io._util import arrow_table_to_pandas  # what pd.read_parquet converts with

    try:
        source = pq.ParquetFile(path)
        empty = True
        for batch in source.iter_batches(batch_size=rows):
            empty = False
            yield arrow_table_to_pandas(pa.Table.from_batches([batch]))
        if empty:
            yield arrow_table_to_pandas(source.schema_arrow.empty_table())
    except UserError:
        raise
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc


def _plain_utf8(path: Path, block: int = 1 << 20) -> bool:
    """Whether the file is UTF-8 throughout (a BOM allowed), checked block by block; binary
    content is refused as load_table refuses it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        head = f.read(block)
        check_text_bytes(head, path)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            return False
        data = head
        try:
            while data:
                decoder.decode(data)
                data = f.read(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _head_text(path: Path, size: int) -> tuple[str, bool]:
    """The first whole lines within `size` bytes (BOM dropped), and whether that is the file."""
    with open(path, "rb") as f:
        data = f.read(size + 1)
    whole = len(data) <= size
    text = data[:size].decode("utf-8", errors="ignore").removeprefix("\ufeff")
    return (text if whole else text[:text.rfind("\n") + 1]), whole


def _delimited_chunks(path: Path, fmt: str, rows: int) -> Iterator[pd.DataFrame]:
    """UTF-8 CSV/TSV in chunks: the delimiter and header checks of load_table on the first
    lines, then pandas' C reader in chunks with the same options as _read_csv."""
    head, whole = _head_text(path, SAMPLE * 4)
    try:
        first, sep = _parse_delimited(head, fmt, path)
    except UserError:
        if whole:
            raise
        first, sep = None, None  # a quoted field spans the cut: let the whole file decide
    if sep is None:
        frame = load_table(path).frame
        for start in range(0, max(len(frame), 1), rows):
            yield frame.iloc[start:start + rows].reset_index(drop=True)
        return
    if _file_has_bare_cr(path):
        with open(path, encoding="utf-8-sig", newline="\n") as lines:
            check_line_breaks(lines, sep, path, True)
    reader = pd.read_csv(path, sep=sep, dtype=object, keep_default_na=False, na_values=[""],
                         encoding="utf-8-sig", chunksize=rows)
    empty = True
    try:
        with reader:
            for chunk in reader:
                if chunk.index.nlevels > 1 or not isinstance(chunk.index, pd.RangeIndex):
                    n = len(chunk.columns)
                    raise pd.errors.ParserError(f"Expected {n} fields in line 2, saw "
                                                f"{n + chunk.index.nlevels}")
                empty = False
                yield chunk.reset_index(drop=True)
    except (ValueError, UnicodeError) as exc:  # ParserError is a ValueError
        raise UserError(_parse_error(path, fmt, exc, None)) from exc
    if empty:
        yield first.iloc[:0]


def _jsonl_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """UTF-8 JSON Lines in chunks of `rows` records, every chunk with all the file's keys in
    first-seen order (as one frame of the whole file has them)."""
    columns: dict[str, None] = {}
    for text, first_line in _jsonl_line_blocks(path, rows):
        columns.update(dict.fromkeys(jsonl_frame(text, path, first_line=first_line)[0].columns))
    for text, first_line in _jsonl_line_blocks(path, rows):
        frame = jsonl_frame(text, path, first_line=first_line)[0]
        yield frame.reindex(columns=list(columns)).astype(object)


def _jsonl_line_blocks(path: Path, rows: int) -> Iterator[tuple[str, int]]:
    """(text of up to `rows` non-blank lines, its first line number), split on \\n only."""
    lines: list[str] = []
    start, count, number = 1, 0, 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.decode("utf-8").removesuffix("\n")
            if number == 1:
                line = line.removeprefix("\ufeff")
            lines.append(line)
            count += bool(line.strip())
            if count == rows:
                yield "\n".join(lines), start
                lines, start, count = [], number + 1, 0
    if count or start == 1:
        yield "\n".join(lines), start  # an empty file: jsonl_frame says so


def read_table(path: Path, encoding: str = "auto") -> tuple[pd.DataFrame, pd.Series]:
    """Read a table; return it plus the per-row flag 'bytes were not valid UTF-8'."""
    read = load_table(path, encoding)
    return read.frame, read.repaired


def _read_parquet(data: bytes, path: Path) -> pd.DataFrame:
    """A Parquet file from its bytes; any pyarrow failure is one line."""
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc


def check_text_bytes(data: bytes, path: Path) -> None:
    """Refuse binary content (an executable or archive renamed to .csv) before decoding it."""
    head = data[:SAMPLE]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return  # UTF-16 with a byte-order mark: NULs are expected
    controls = sum(head.count(bytes([b])) for b in _CONTROL_BYTES)
    if b"\x00" in head and controls > max(len(head) // 100, 1):
        raise UserError(f"{path}: not a text file ({controls} control bytes in the first "
                        f"{len(head)}; binary content renamed to {path.suffix}?)")


def decode_text(data: bytes, encoding: str, path: Path) -> tuple[str, str]:
    """Decode bytes; return the text and the encoding used.

    'auto': UTF-8 (a BOM is dropped; UTF-16 with a BOM is honoured). Otherwise a file with no UTF-8
    at all that charset-normalizer reads as a non-Latin script gets that codec; else bytes that are
    not UTF-8 stay escaped (U+DC80..U+DCFF) for `_repair`, to decode as the first of FALLBACKS that
    decodes them all ('utf-8+cp1252'). A configured encoding is strict: a bad byte names its line."""
    if encoding != "auto":
        return _decode_strict(data, encoding, path), encoding
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _decode_strict(data, "utf-16", path), "utf-16"
    try:
        return data.decode("utf-8").removeprefix("\ufeff"), "utf-8"
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    escaped = {ord(c) - 0xDC00 for c in set(_ESCAPED.findall(text))}
    if _VALID_NON_ASCII.search(text) is None:  # no UTF-8 at all in the file
        codec = _non_latin_codec(data)
        if codec is not None:
            log.warning("%s: not UTF-8; charset-normalizer reads it as %s (set ingest.encoding "
                        "if that is wrong)", path, codec)
            return _decode_strict(data, codec, path), codec
    return text, f"utf-8+{_fallback(escaped)}"


def _decode_strict(data: bytes, encoding: str, path: Path) -> str:
    """Decode with one codec; an unknown codec or a bad byte is a user error naming the line."""
    try:
        return data.decode(encoding).removeprefix("\ufeff")
    except LookupError as exc:
        raise UserError(f"{path}: unknown encoding {encoding!r}") from exc
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: bytes not valid {encoding} ({exc.reason}); "
                        "set ingest.encoding: auto to detect the encoding") from exc


def _fallback(escaped: set[int]) -> str:
    """The first single-byte code page of FALLBACKS that decodes every non-UTF-8 byte seen."""
    for codec in FALLBACKS:
        try:
            bytes(sorted(escaped)).decode(codec)
            return codec
        except UnicodeDecodeError:
            continue
    return FALLBACKS[-1]


def _non_latin_codec(data: bytes) -> str | None:
    """charset-normalizer's codec for a file with no UTF-8 in it, when the text it decodes is
    mostly non-Latin letters (Cyrillic, CJK, Greek, ...): cp1252 would turn those into mojibake."""
    from charset_normalizer import from_bytes

    best = from_bytes(data[:SAMPLE]).best()
    if best is None or best.encoding.startswith(("ascii", "utf")):  # UTF-16/32 only with a BOM
        return None
    letters = [c for c in str(best) if c.isalpha() and ord(c) > 0x7F]
    latin = sum(unicodedata.name(c, "").startswith("LATIN") for c in letters)
    enough = len(letters) >= MIN_DETECT_LETTERS  # a few bytes are no evidence for a script
    return best.encoding if enough and latin < len(letters) / 2 else None


def _read_csv(text: str, sep: str) -> pd.DataFrame:
    """The C parser on the UTF-8 bytes; escaped (non-UTF-8) bytes round-trip as surrogates."""
    data = io.BytesIO(text.encode("utf-8", errors="surrogateescape"))
    df = pd.read_csv(data, sep=sep, dtype=object, keep_default_na=False, na_values=[""],
                     encoding="utf-8", encoding_errors="surrogateescape")
    if not isinstance(df.index, pd.RangeIndex):
        # pandas silently turns the first column into the index when the first row has more
        # fields than the header (an unquoted delimiter in the text): that is a parse error
        n = len(df.columns)
        raise pd.errors.ParserError(f"Expected {n} fields in line 2, saw {n + df.index.nlevels}")
    return df


def sniff_delimiter(text: str) -> str | None:
    """The delimiter csv.Sniffer sees in the first lines (one of DELIMITERS), or None."""
    sample = "\n".join(text[:SAMPLE].splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:  # free text defeats the sniffer: the header line is plain names
        header = sample.split("\n", 1)[0]
        best = max(DELIMITERS, key=header.count)
        return best if header.count(best) else None


def check_header(text: str, sep: str, path: Path) -> None:
    """A column name given twice would be read as NAME and NAME.1 (pandas renames it), and the
    wrong one trained on: refused, naming the column and its positions.

    Raises UserError."""
    header = next(csv.reader(io.StringIO(text[:SAMPLE], newline=""), delimiter=sep), [])
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name in seen:
            raise UserError(f"{path}, line 1: column {name!r} appears twice in the header "
                            f"(columns {seen[name]} and {i}); rename one")
        seen[name] = i


def _parse_delimited(text: str, fmt: str, path: Path) -> tuple[pd.DataFrame, str]:
    """Parse with the format's delimiter; if that fails or gives one column, with the sniffed one
    (a ';' export from a European Excel); else one line naming the file, line and likely fix."""
    expected = "\t" if fmt == "tsv" else ","
    error: Exception | None = None
    try:
        df = _read_csv(text, expected)
        if df.shape[1] > 1:
            check_header(text, expected, path)
            _check_text_line_breaks(text, expected, path)
            return df, expected
    except pd.errors.EmptyDataError as exc:
        raise UserError(f"{path}: file is empty") from exc
    except (ValueError, UnicodeError) as exc:  # ParserError is a ValueError
        error = exc
    sniffed = sniff_delimiter(text)
    if sniffed is not None and sniffed != expected:
        try:
            alt = _read_csv(text, sniffed)
            if alt.shape[1] > 1:
                check_header(text, sniffed, path)
                _check_text_line_breaks(text, sniffed, path)
                log.warning("%s: columns are separated by %r, not %r; read it so",
                            path, sniffed, expected)
                return alt, sniffed
        except (ValueError, UnicodeError):
            pass
    if error is None:
        _check_text_line_breaks(text, expected, path)
        return df, expected
    raise UserError(_parse_error(path, fmt, error, sniffed if sniffed != expected else None,
                                 (text, expected)))


def _parse_error(path: Path, fmt: str, exc: Exception, sniffed: str | None,
                 source: tuple[str, str] | None = None) -> str:
    """'FILE, line N: not valid CSV: ...' with a hint about the delimiter; N is the line an
    editor shows (`source`: the text and the delimiter it was parsed with)."""
    msg = _first_line(exc).removeprefix("Error tokenizing data. C error: ")
    line = _physical_line(*source) if source and msg.startswith("Expected ") else None
    if line is not None:
        msg = _LINE.sub(f"line {line}", msg, count=1)
    m = _LINE.search(msg)
    loc = f"{path}, line {m[1]}" if m else str(path)
    hint = (f"the delimiter looks like {sniffed!r}" if sniffed
            else "check the delimiter and that fields holding it are quoted")
    return f"{loc}: not valid {fmt.upper()}: {msg} ({hint})"


def check_line_breaks(lines: Iterable[str], sep: str, path: Path, bare_cr: object) -> None:
    """A carriage return (\\r) alone inside an unquoted field of a file whose lines end in \\n:
    every CSV reader (pandas' too) ends the row there, as old Mac files end their lines, so the
    row would silently become two and the row count change. Refused, naming the line and column;
    inside a quoted field it is text and kept. `lines`: the file split at \\n only; `bare_cr`:
    whether the text holds such a character at all (the scan is skipped otherwise).

    Raises UserError."""
    if not bare_cr:
        return
    seen = [""]

    def remembered(source: Iterable[str]) -> Iterator[str]:
        for text in source:
            seen[0] = text
            yield text

    reader = csv.reader(remembered(lines), delimiter=sep)
    header: list[str] = []
    try:
        for record in reader:
            header = header or record
    except csv.Error as exc:
        if "new-line character" not in str(exc):
            return  # another fault: the parser's own error names it
        raise UserError(_bare_cr_message(path, reader.line_num, seen[0], header, sep)) from exc


def _check_text_line_breaks(text: str, sep: str, path: Path) -> None:
    """check_line_breaks over a whole decoded text (a file whose lines end in a lone \\r has no
    \\n and is read as such)."""
    check_line_breaks(io.StringIO(text, newline="\n"), sep, path,
                      "\n" in text and _BARE_CR.search(text))


def _bare_cr_message(path: Path, line: int, physical: str, header: list[str], sep: str) -> str:
    """The refusal for a lone carriage return in `physical`, the text of `line` (1-based, as an
    editor numbers lines)."""
    prefix = physical[:max(physical.find("\r"), 0)]
    field = len(next(csv.reader([prefix], delimiter=sep), [""]))
    name = header[field - 1] if 0 < field <= len(header) else f"#{field}"
    return (f"{path}, line {line}, column {name!r}: a carriage return (\\r) inside an unquoted "
            f"field would split this row in two; quote the field or remove the character")


def _file_has_bare_cr(path: Path, block: int = 1 << 20) -> bool:
    """Whether the file's lines end in \\n and it holds a carriage return not followed by one,
    read block by block (a \\r ending one block is judged with the next block's first byte)."""
    bare, newline, tail = False, False, b""
    with open(path, "rb") as f:
        while data := f.read(block):
            data = tail + data
            bare = bare or re.search(rb"\r(?!\n)", data[:-1]) is not None
            newline = newline or b"\n" in data
            if bare and newline:
                return True
            tail = data[-1:]
    return newline and (bare or tail == b"\r")


def _physical_line(text: str, sep: str) -> int | None:
    """The line (as an editor numbers it) ending the first record with more fields than the
    header, which is what pandas' tokenizer refuses: pandas numbers records, so every quoted
    newline before the bad record made its "line N" point N - k lines too early. None: no such
    record (the error was another one)."""
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    try:
        width = len(next(reader))
        for record in reader:
            if len(record) > width:
                return reader.line_num
    except (StopIteration, csv.Error):
        return None
    return None


def _first_line(exc: Exception) -> str:
    """The first line of an exception message (library messages can run to many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_jsonl(text: str, path: Path) -> pd.DataFrame:
    """One JSON object per line; a bad line is an error naming its row."""
    return jsonl_frame(text, path)[0]


def jsonl_frame(text: str, path: Path, table: dict[int, str] | None = None,
                first_line: int = 1) -> tuple[pd.DataFrame, pd.Series]:
    """JSON Lines (split on \\n only: U+2028 or NEL inside a string is text) as a frame, plus
    per row whether it held escaped non-UTF-8 bytes, decoded with `table` before parsing."""
    records, flags = [], []
    for i, line in enumerate(text.split("\n"), start=first_line):
        if not line.strip():
            continue
        escaped = table is not None and _has_escape(line)
        try:
            rec = json.loads(line.translate(table) if escaped else line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where(path, i)}: not valid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict):
            raise UserError(f"{where(path, i)}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
        flags.append(escaped)
    if not records:
        raise UserError(f"{path}: file is empty")
    return _records_frame(records, path), pd.Series(flags, dtype=bool)


def _records_frame(records: list[dict], path: Path) -> pd.DataFrame:
    """Records as an object frame; a string pandas cannot store (an unpaired surrogate escape
    such as \\ud800) is an error naming its record and key."""
    try:
        return pd.DataFrame.from_records(records).astype(object)
    except UnicodeEncodeError:
        for row, rec in enumerate(records, start=1):
            for key, value in rec.items():
                if isinstance(value, str) and not _encodable(value):
                    raise UserError(f"{where(path, row, key)}: not valid Unicode "
                                    "(an unpaired surrogate escape)") from None
        raise UserError(f"{path}: not valid Unicode (an unpaired surrogate escape)") from None


def _encodable(value: str) -> bool:
    """A string UTF-8 can encode (no lone surrogates)."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def decode_document(data: bytes, encoding: str, path: Path) -> tuple[str, str]:
    """One whole text (an aclImdb review file) decoded as `decode_text` decides, escapes repaired."""
    check_text_bytes(data, path)
    text, codec = decode_text(data, encoding, path)
    if "+" in codec:
        text = text.translate(escape_table(codec.split("+", 1)[1]))
    return text, codec


def _has_escape(value: object) -> bool:
    """A string cell holding escaped (non-UTF-8) bytes."""
    return isinstance(value, str) and _ESCAPED.search(value) is not None


def escape_table(codec: str) -> dict[int, str]:
    """str.translate table: escaped byte U+DC00+b -> b decoded with a single-byte codec."""
    table = {}
    for b in range(0x80, 0x100):
        try:
            table[0xDC00 + b] = bytes([b]).decode(codec)
        except UnicodeDecodeError:
            table[0xDC00 + b] = bytes([b]).decode("latin-1")
    return table


def _repair(df: pd.DataFrame, codec: str, detected: bool) -> pd.Series:
    """Decode escaped bytes in place with the file's fallback; flag rows that needed it.

    A whole-file legacy codec that was detected (not configured) flags every non-ASCII row."""
    flags = pd.Series(False, index=df.index)
    if "+" in codec:
        table = escape_table(codec.split("+", 1)[1])
        for col in df.columns:
            bad = df[col].map(_has_escape).astype(bool)
            if bad.any():
                df.loc[bad, col] = df.loc[bad, col].map(lambda v: v.translate(table))
                flags |= bad
    elif detected and codec not in ("utf-8", "utf-16"):
        for col in df.columns:
            flags |= df[col].map(lambda v: isinstance(v, str) and not v.isascii()).astype(bool)
    return flags



def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and relative spellings included)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def replaced_on_success(dest: Path, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """The one way a file textloop writes for the user (`predict --output`) comes to be: the
    caller writes a temporary file beside `dest`, which replaces `dest` only once it is whole.

    An output that is one of the inputs is refused before anything is written (writing it would
    empty the input being read); a failed or interrupted write (disk full, file-size limit,
    permissions) removes the temporary file and leaves `dest` as it was, with one line naming
    it. Raises UserError."""
    for source in inputs:
        if _same_file(Path(source), dest):
            raise UserError(f"{dest}: the output is the input file; choose another --output "
                            "(the input is left unchanged)")
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.partial{dest.suffix}")  # same format
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, dest)
    except OSError as exc:
        if exc.filename not in (None, str(tmp), str(dest)):
            raise  # not the output's failure (an input's, or the state's)
        raise UserError(f"{dest}: cannot be written ({exc.strerror or exc}); "
                        f"{'the previous file is unchanged' if dest.exists() else 'nothing written'}"
                        ) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


class TableAppender:
    """Writes a table chunk by chunk, giving the bytes write_table gives for the whole frame
    (CSV/TSV: the header once; JSONL: lines appended; None: JSONL on stdout). Parquet is not
    appendable this way (its schema is unified over all parts: textloop.pipeline.executor)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.first = path, True
        self.fmt = "jsonl" if path is None else table_format(path)
        if self.fmt == "parquet":
            raise ValueError("TableAppender writes CSV, TSV or JSONL")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")

    def write(self, df: pd.DataFrame) -> None:
        """Append one chunk (the same columns in every chunk)."""
        if self.path is None:
            write_table(df, None)
        elif self.fmt == "jsonl":
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(df.to_json(orient="records", lines=True, force_ascii=False))
        else:
            write_delimited(df, self.path, self.fmt, header=self.first, mode="a")
        self.first = False


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
        write_delimited(df, path, fmt)


def write_delimited(df: pd.DataFrame, path: Path, fmt: str, header: bool = True,
                    mode: str = "w") -> None:
    """CSV/TSV as every reader reads it back: Python's csv writer quotes a field holding the
    delimiter, a quote or a \\n, but not one holding a lone \\r, which every reader (ours too,
    see check_line_breaks) takes for a line end. A chunk with such a text quotes every text."""
    texts = df.select_dtypes(include=["object", "string"])
    lone_cr = any(texts[c].astype(str).str.contains("\r", regex=False).any() for c in texts)
    df.to_csv(path, mode=mode, header=header, index=False, sep="\t" if fmt == "tsv" else ",",
              quoting=csv.QUOTE_NONNUMERIC if lone_cr else csv.QUOTE_MINIMAL)
