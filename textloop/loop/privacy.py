"""Privacy of the loop's data: what the prediction log keeps of a served text (redacted, hash
only), the retention purge the monitor flow runs, and `textloop forget` (erasure).

Erasure: the text's hash goes into the DVC-versioned tombstone list first (tasks/ingest/tombstones.py; a
new version of it, so the erasure itself is versioned and ingest drops the rows from every
later snapshot, feedback batches included), then its rows are deleted from the prediction log,
the feedback table and the labeling queue, and one `erasures` row per hash records when, how
many rows, and which registered versions were trained on it (their stored training rows)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from textloop.core.errors import UserError, where
from textloop.core.layout import Project
from textloop.core.text import normalize_text, text_hash
from textloop.loop import db

log = logging.getLogger(__name__)
_HEX = set("0123456789abcdef")


def logged_text_rule(kinds: Sequence[str], keep_text: bool) -> Callable[[str], str | None]:
    """What the prediction log stores for a served text: nothing (serve.log_text false), the
    text with `kinds` redacted (serve.redact_log, the rule clean uses), or the text as served."""
    if not keep_text:
        return lambda _text: None
    if not kinds:
        return lambda text: text
    from tasks.clean.redact import check_kinds, redact

    checked = check_kinds(kinds)
    return lambda text: redact(text, checked)[0]


def purge_texts(engine: Engine, retention_days: float | None,
                now: dt.datetime | None = None) -> dict[str, Any]:
    """Empty the text of predictions older than `retention_days` (hash, label, probabilities,
    version kept); every purge that ran is recorded (`purges` row + a log line). None: kept."""
    if retention_days is None:
        return {"retention_days": None, "rows_purged": 0}
    cutoff = (now or db.utcnow()) - dt.timedelta(days=retention_days)
    query = (db.predictions.update()
             .where(db.predictions.c.created_at < cutoff, db.predictions.c.text.is_not(None))
             .values(text=None))
    with engine.begin() as conn:
        n = conn.execute(query).rowcount
    out = {"retention_days": float(retention_days), "cutoff": cutoff, "rows_purged": int(n)}
    out["purge_id"] = db.insert_row(engine, db.purges, dict(out))
    log.info("retention: purged the text of %d prediction(s) older than %s (%g days)", n,
             cutoff.isoformat(timespec="seconds"), retention_days)
    return out


def read_targets(path: Path) -> dict[str, str | None]:
    """`forget --file`: a .txt file (one text per line) or a table with a `text` or a
    `text_hash` column. Raises UserError naming the file (and row, column) otherwise."""
    if path.suffix.lower() == ".txt":
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return targets(texts=lines)
    from textloop.core.tables import read_table

    df, _ = read_table(path)
    if "text_hash" in df.columns:
        for i, h in enumerate(df["text_hash"], start=1):
            check_hash(str(h), where(path, i, "text_hash"))
        return targets(hashes=df["text_hash"].astype(str))
    if "text" not in df.columns:
        raise UserError(f"{where(path, column='text')}: column not found (give `text` or "
                        f"`text_hash`; columns are: {', '.join(map(str, df.columns))})")
    return targets(texts=df["text"].dropna().astype(str))


def check_hash(value: str, place: str) -> str:
    """A text hash as `forget --hash` takes it: 64 lowercase hex characters."""
    if len(value) != 64 or not set(value) <= _HEX:
        raise UserError(f"{place}: not a text hash (64 lowercase hex characters): {value[:70]!r}")
    return value


def targets(texts: Iterable[str] = (), hashes: Iterable[str] = ()) -> dict[str, str | None]:
    """hash -> the text when known (None for a bare hash). Raises UserError when empty."""
    out: dict[str, str | None] = {check_hash(h, "--hash"): None for h in hashes}
    for text in texts:
        if not normalize_text(text):
            raise UserError(f"an empty text cannot be erased: {text[:40]!r}")
        out[text_hash(text)] = text
    if not out:
        raise UserError("nothing to forget: give --text, --hash or --file")
    return out


def find_texts(engine: Engine, project: Project, wanted: dict[str, str | None]
               ) -> dict[str, str | None]:
    """Fill in the text of bare hashes from what still holds it (prediction log, feedback
    table, feedback store, the raw snapshot): needed to find the versions trained on it."""
    from tasks.feedback import read_store

    out = dict(wanted)
    missing = {h for h, t in out.items() if t is None}
    if not missing:
        return out
    p = project.params()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.predictions.c.text).where(
            db.predictions.c.text_hash.in_(missing), db.predictions.c.text.is_not(None))).all()
        fb = [r[0] for r in conn.execute(sa.select(db.feedback.c.text)).all()]
    raw = project.path(p.paths.raw)
    pools = [[r[0] for r in rows], fb, read_store(project.path(p.paths.feedback))["text"].tolist(),
             pd.read_parquet(raw, columns=["text"])["text"].tolist() if raw.is_file() else []]
    for pool in pools:
        for text in pool:
            h = text_hash(text) if isinstance(text, str) else None
            if h in missing:
                out[h], missing = text, missing - {h}
        if not missing:
            break
    return out


def training_forms(text: str, project: Project) -> list[str]:
    """The texts training may have seen for `text`: as given, and as clean made it (normalised
    with the configured flags, then redacted): what train_rows.npy hashes."""
    from tasks.clean.redact import redact

    c = project.params().clean
    cleaned = normalize_text(text, c.strip_html, c.lowercase)
    return list(dict.fromkeys([text, cleaned, redact(cleaned, c.redact)[0]]))


def trained_versions(project: Project, texts: dict[str, str | None]
                     ) -> dict[str, list[dict[str, str]]]:
    """hash -> registered versions whose training rows contain its text (any clean form);
    a hash whose text is found nowhere any more gets [] (it cannot be looked up)."""
    from tasks.deploy import row_hashes_per_row
    from textloop.pipeline import tracking
    from textloop.pipeline.registry import versions_trained_on

    groups = {h: row_hashes_per_row(training_forms(t, project)).tolist()
              for h, t in texts.items() if t is not None}
    if not groups:
        return {h: [] for h in texts}
    tracking.setup(project)
    found = versions_trained_on(groups)
    return {h: found.get(h, []) for h in texts}


def delete_rows(engine: Engine, h: str, text: str | None) -> dict[str, int]:
    """Delete the predictions with hash `h` (or, given the text, exactly that text: rows logged
    before hashes were of the normalised text) and the feedback on them or on the same text."""
    pred = db.predictions.c
    match = pred.text_hash == h if text is None else sa.or_(pred.text_hash == h, pred.text == text)
    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(sa.select(pred.id).where(match)).all()]
        fb = conn.execute(sa.select(db.feedback.c.id, db.feedback.c.text,
                                    db.feedback.c.prediction_id)).all()
        fb_ids = [i for i, t, pid in fb if pid in set(ids) or text_hash(t) == h]
        for chunk in range(0, max(len(ids), len(fb_ids)), 500):
            conn.execute(db.predictions.delete().where(pred.id.in_(ids[chunk:chunk + 500])))
            conn.execute(db.feedback.delete().where(
                db.feedback.c.id.in_(fb_ids[chunk:chunk + 500])))
    return {"predictions_removed": len(ids), "feedback_removed": len(fb_ids)}


def drop_from_queue(path: Path, hashes: set[str]) -> dict[str, int]:
    """Rewrite the labeling queue without rows whose (cleaned) text hashes to one of `hashes`;
    removed count per hash."""
    if not path.is_file():
        return {}
    queue = pd.read_csv(path, dtype=str, keep_default_na=False)
    if queue.empty:
        return {}
    row_hash = queue["text"].map(text_hash)
    hit = row_hash.isin(hashes)
    if hit.any():
        tmp = path.with_name(f".{path.name}.tmp")
        queue[~hit].to_csv(tmp, index=False)
        tmp.replace(path)
    return {str(k): int(v) for k, v in row_hash[hit].value_counts().items()}


def store_matches(project: Project, forms: dict[str, set[str]]) -> dict[str, int]:
    """Rows of the append-only feedback store holding each hash's text (left in place: the
    tombstones keep them out of every later snapshot)."""
    from tasks.feedback import read_store

    store = read_store(project.path(project.params().paths.feedback))
    row_hash = store["text"].map(text_hash) if len(store) else pd.Series(dtype=str)
    return {h: int(row_hash.isin(f).sum()) for h, f in forms.items()}


def forget(project: Project, wanted: dict[str, str | None], engine: Engine | None = None
           ) -> dict[str, Any]:
    """Erase texts (hash -> text or None) everywhere textloop keeps them; returns the record.

    Order: look up what still holds each text and which registered versions trained on it;
    add the hashes to the tombstone list and version it (`dvc add`; StoreNotVersioned, and
    nothing deleted, when DVC cannot); delete the prediction-log, feedback-table and queue
    rows; record one `erasures` row per hash. The next lifecycle run drops the texts from the
    raw snapshot on (ingest applies the tombstones)."""
    from tasks.ingest.tombstones import add_tombstones
    from textloop.loop.retrain_policy import policy_db_url
    from textloop.loop.store import version_store

    p = project.params()
    engine = engine or db.open_db(policy_db_url(project))
    known = find_texts(engine, project, wanted)
    forms = {h: {h} | ({text_hash(f) for f in training_forms(t, project)} if t else set())
             for h, t in known.items()}
    versions = trained_versions(project, known)
    folder = project.path(p.paths.tombstones)
    new = add_tombstones(folder, known)
    version_store(project, folder)
    queue = drop_from_queue(project.path(p.paths.label_queue), set().union(*forms.values()))
    stored = store_matches(project, forms)
    records = []
    for h, text in known.items():
        removed = delete_rows(engine, h, text)
        row = {"text_hash": h, **removed,
               "queue_removed": sum(queue.get(f, 0) for f in forms[h]),
               "store_rows": stored[h], "trained_versions": versions[h],
               "detail": {"text_known": text is not None, "tombstones": str(folder)}}
        row["id"] = db.insert_row(engine, db.erasures, dict(row))
        records.append(row)
        log.info("forget %s: %d prediction(s), %d feedback row(s), %d queued row(s) removed; "
                 "%d store row(s) tombstoned; trained on by %s", h[:12],
                 row["predictions_removed"], row["feedback_removed"], row["queue_removed"],
                 row["store_rows"],
                 ", ".join(f"{v['model']} v{v['version']}" for v in versions[h]) or "no version")
    return {"erased": records, "new_tombstones": new, "tombstones": str(folder)}
