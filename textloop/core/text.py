"""The one text-normalisation rule: used by clean, by every model's own preprocessing at
predict/serve time, and by the duplicate, conflict and split keys."""

from __future__ import annotations

import html
import re
import unicodedata

_TAG = re.compile(r"<[^>]{0,200}>")
_WS = re.compile(r"\s+")
# C0/C1 control characters except whitespace; they break tokenizers and CSV round-trips
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def normalize_text(text: object, strip_html: bool = True, lowercase: bool = False) -> str:
    """One canonical form of a text, used for training, dedup, split hashing and serving."""
    if not isinstance(text, str):
        return ""
    out = unicodedata.normalize("NFC", text)
    if strip_html:
        out = html.unescape(_TAG.sub(" ", out))
    out = _CONTROL.sub(" ", out)
    out = _WS.sub(" ", out).strip()
    return out.lower() if lowercase else out
