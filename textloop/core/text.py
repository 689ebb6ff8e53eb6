"""The one text-normalisation rule: used by clean, by every model's own preprocessing at
predict/serve time, and by the duplicate, conflict and split keys."""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

_TAG = re.compile(r"<[^>]{0,200}>")
_WS = re.compile(r"\s+")  # the whitespace rule as a regex, for textloop.core.textspans' span replay


def _invisible() -> dict[int, None]:
    """str.translate table deleting invisible code points: format characters (category Cf: zero
    width space/joiners, LRM/RLM, word joiner, BOM, soft hyphen, ...) and control characters
    (Cc: NUL, C0/C1) that are not whitespace. Deleted, not spaced: 'ani\\x00mal' is 'animal'."""
    table: dict[int, None] = {}
    for cp in (*range(0x20000), *range(0xE0000, 0xE1000)):  # no Cf/Cc in planes 2-13, 15, 16
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if cat == "Cf" or (cat == "Cc" and not ch.isspace()):
            table[cp] = None
    return table


_INVISIBLE: dict[int, None] | None = None  # built on first use (no import-time work)


def normalize_text(text: object, strip_html: bool = True, lowercase: bool = False) -> str:
    """One canonical form of a text, used for training, dedup, split hashing and serving.

    HTML tags/entities (when strip_html), then invisible characters deleted, then NFC, then any
    run of whitespace (str.isspace, the same set as the regex \\s) as one space, trimmed. Not a str (None, NaN) -> "". Idempotent."""
    global _INVISIBLE
    if not isinstance(text, str):
        return ""
    if _INVISIBLE is None:
        _INVISIBLE = _invisible()
    out = html.unescape(_TAG.sub(" ", text)) if strip_html else text
    out = unicodedata.normalize("NFC", out.translate(_INVISIBLE))
    out = " ".join(out.split())  # whitespace runs -> one space, trimmed (str.split: 3x a regex)
    return out.lower() if lowercase else out


def text_hash(text: object) -> str:
    """The identity of a text for privacy bookkeeping: sha256 (hex, 64 characters) of its
    normalised form (normalize_text with its defaults), so the same text served, fed back or
    ingested from a file has one hash whatever its spacing or invisible characters. Used by the
    prediction log's text_hash column, `textloop forget` and the tombstones ingest applies."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def text_keys(texts: Sequence[Any]) -> list[str]:
    """The compact stand-in for a text in the global steps over partitions (dedupe, conflicts,
    test keys): 128-bit blake2b, hex (32 chars)."""
    return [hashlib.blake2b(str(t).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
            for t in texts]
