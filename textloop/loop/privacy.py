"""Privacy of the loop's data: what the prediction log keeps of a served text (redacted, hash
only), the retention purge the monitor flow runs, and `textloop forget` (erasure).

Erasure: the text's hash goes into the DVC-versioned tombstone list first (tasks/ingest/tombstones.py; a
new version of it, so the erasure itself is versioned and ingest drops the rows from every
later snapshot), then every copy in the registry of places a text lives
(textloop/loop/text_copies.py: prediction and shadow log, feedback, label answers, both queues,
the feedback store) is removed, and one `erasures` row per hash records when, how many rows
per place, and which registered versions were trained on it (their stored training rows)."""

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
                now: dt.datetime | None = None, project: Project | None = None) -> dict[str, Any]:
    """Empty the text of predictions older than `retention_days` (hash, label, probabilities,
    version kept) and of every copy the registry of text places knows (textloop/loop/
    text_copies.py; the queue files need `project`); every purge that ran is recorded
    (`purges` row + a log line). None: kept."""
    from textloop.loop.text_copies import purge

    return purge(project, engine, retention_days, now)


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


def forget(project: Project, wanted: dict[str, str | None], engine: Engine | None = None
           ) -> dict[str, Any]:
    """Erase texts (hash -> text or None) everywhere textloop keeps them; returns the record.

    Order: look up what still holds each text and which registered versions trained on it;
    add the hashes to the tombstone list and version it (`dvc add`; StoreNotVersioned, and
    nothing deleted, when DVC cannot); remove every copy the registry of text places knows
    (text_copies.erase); record one `erasures` row per hash. The next lifecycle run drops the
    texts from the raw snapshot on (ingest applies the tombstones)."""
    from tasks.ingest.tombstones import add_tombstones
    from textloop.loop.retrain_policy import policy_db_url
    from textloop.loop.store import version_store
    from textloop.loop.text_copies import erase

    p = project.params()
    engine = engine or db.open_db(policy_db_url(project))
    known = find_texts(engine, project, wanted)
    forms = {h: {h} | ({text_hash(f) for f in training_forms(t, project)} if t else set())
             for h, t in known.items()}
    versions = trained_versions(project, known)
    folder = project.path(p.paths.tombstones)
    new = add_tombstones(folder, known)
    version_store(project, folder)
    records = []
    for h, text in known.items():
        places = erase(project, engine, forms[h], {text} if text else set())
        row = {"text_hash": h, "predictions_removed": places["prediction_log"],
               "feedback_removed": places["feedback"],
               "queue_removed": places["label_queue"] + places["active_queue"],
               "store_rows": places["feedback_store"], "trained_versions": versions[h],
               "detail": {"text_known": text is not None, "tombstones": str(folder),
                          "places": places}}
        row["id"] = db.insert_row(engine, db.erasures, dict(row))
        records.append(row)
        log.info("forget %s: %s; trained on by %s", h[:12],
                 ", ".join(f"{k} {v}" for k, v in places.items()),
                 ", ".join(f"{v['model']} v{v['version']}" for v in versions[h]) or "no version")
    return {"erased": records, "new_tombstones": new, "tombstones": str(folder)}
