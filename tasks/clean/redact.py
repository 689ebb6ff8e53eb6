"""redact: replace personal data in a text with placeholders (<EMAIL>, <PHONE>, ...).

The one redaction rule, used by clean (before anything downstream sees the text) and by serving
(before a text is logged). Detection is Presidio's pattern recognisers, called directly: no spaCy
NLP engine (none is available offline) and no network (tldextract, which the e-mail recogniser
uses to check the domain, is given its bundled public-suffix snapshot instead of a download).
Presidio has no @mention recogniser; ours is a Presidio PatternRecognizer with one pattern.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

# kind (params.yaml clean.redact) -> (Presidio entity, placeholder)
KINDS: dict[str, tuple[str, str]] = {
    "email": ("EMAIL_ADDRESS", "<EMAIL>"),
    "phone": ("PHONE_NUMBER", "<PHONE>"),
    "url": ("URL", "<URL>"),
    "ip": ("IP_ADDRESS", "<IP>"),
    "credit_card": ("CREDIT_CARD", "<CREDIT_CARD>"),
    "iban": ("IBAN_CODE", "<IBAN>"),
    "mention": ("MENTION", "<MENTION>"),
}
# Cheap necessary conditions: a text that fails one cannot contain that kind, so the (slower)
# recogniser is not called. They only skip work; they never decide a match.
_MAY_CONTAIN: dict[str, Callable[[str], bool]] = {
    "email": lambda t: "@" in t,
    "mention": lambda t: "@" in t,
    "url": lambda t: "." in t,
    "ip": lambda t: "." in t or ":" in t,
    "phone": lambda t: sum(c.isdigit() for c in t) >= 6,
    "credit_card": lambda t: sum(c.isdigit() for c in t) >= 12,
    "iban": lambda t: sum(c.isdigit() for c in t) >= 12,
}
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion\s*|\bver\.?\s*|\brelease\s*)$")
_MENTION = r"(?<![\w@.])@[A-Za-z0-9_]{1,30}\b(?!@|\.[A-Za-z])"


def model_meta(kinds: Sequence[str]) -> dict[str, list[str]]:
    """The model-folder metadata entry that makes a model redact its input as clean redacted
    its training text ({} without redaction, so such models' metadata and hashes are as before)."""
    return {"redact": check_kinds(kinds)} if kinds else {}


def check_kinds(kinds: Iterable[str]) -> list[str]:
    """The kinds in their given order, duplicates removed. Raises ValueError on an unknown one."""
    out = list(dict.fromkeys(kinds))
    bad = [k for k in out if k not in KINDS]
    if bad:
        raise ValueError(f"unknown redaction kind(s) {bad}; known: {', '.join(KINDS)}")
    return out


@functools.cache
def _suffix_extractor() -> Any:
    """tldextract with its bundled suffix list only: no download, no cache folder."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@functools.cache
def _recognizer(kind: str) -> Any:
    """The Presidio recogniser of one kind (built once per process; Presidio is imported here,
    not at module import, because it pulls spaCy and costs seconds)."""
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's e-mail recogniser; the domain is checked against the bundled suffix list."""

        def validate_result(self, pattern_text: str) -> bool:
            return _suffix_extractor()(pattern_text).fqdn != ""

    if kind == "mention":
        return PatternRecognizer(supported_entity="MENTION", name="MentionRecognizer",
                                 patterns=[Pattern("at-mention", _MENTION, 0.6)])
    classes = {"email": OfflineEmailRecognizer, "phone": PhoneRecognizer, "url": UrlRecognizer,
               "ip": IpRecognizer, "credit_card": CreditCardRecognizer, "iban": IbanRecognizer}
    return classes[kind]()


def find_spans(text: str, kinds: Sequence[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) matches in `text`, left to right.

    Overlaps (an e-mail's domain is also a URL) keep the higher Presidio score, then the
    longer span, then the kind listed first. Presidio's matches pass `_plausible` first."""
    found: list[tuple[float, int, int, int, str]] = []
    for rank, kind in enumerate(kinds):
        if not _MAY_CONTAIN[kind](text):
            continue
        entity = KINDS[kind][0]
        for r in _recognizer(kind).analyze(text, [entity], None):
            if not _plausible(kind, text, r.start, r.end):
                continue
            found.append((-r.score, -(r.end - r.start), rank, r.start, kind))
    taken: list[tuple[int, int, str]] = []
    for _, neg_len, _, start, kind in sorted(found):
        end = start - neg_len
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, kind))
    return sorted(taken)


def _plausible(kind: str, text: str, start: int, end: int) -> bool:
    """Precision rules on top of Presidio, from false positives seen on the default corpus:
    an IP needs a digit (':: ' is IPv6's unspecified address, and an emoticon) and is not a
    version string (right after `v`/`version`); a phone number has at least 7 digits (flight
    1641 is valid in some region's numbering plan); a URL is a whole token, not part of a word
    or of an e-mail address ('jane.do' in 'jane.doe@x.com'), and one without a scheme is not
    two words glued by dots ('late...at', 'down.My')."""
    span = text[start:end]
    if kind == "ip":
        return any(c.isdigit() for c in span) and not _VERSION_BEFORE.search(text[:start])
    if kind == "phone":
        return sum(c.isdigit() for c in span) >= 7
    if kind == "url":
        return _whole_token(text, start, end) and ("://" in span or not _sentence_like(span))
    return True


def _sentence_like(span: str) -> bool:
    """'..' (an ellipsis) or a capitalised top-level label: a missing space after a full stop."""
    return ".." in span or span.rsplit(".", 1)[-1][:1].isupper()


def _whole_token(text: str, start: int, end: int) -> bool:
    """The span is not glued to a word character or an @ on either side."""
    before, after = text[start - 1:start], text[end:end + 1]
    return not (before.isalnum() or before in ("@", "_", ".")
                or after.isalnum() or after in ("@", "_"))


def redact(text: str, kinds: Sequence[str]) -> tuple[str, Counter[str]]:
    """`text` with every match of `kinds` replaced by its placeholder, and the count per kind.

    kinds: names from KINDS (unknown ones raise ValueError). No kinds: the text unchanged."""
    if not kinds or not text:
        return text, Counter()
    spans = find_spans(text, check_kinds(kinds))
    counts: Counter[str] = Counter(kind for _, _, kind in spans)
    parts, pos = [], 0
    for start, end, kind in spans:
        parts += [text[pos:start], KINDS[kind][1]]
        pos = end
    return "".join(parts) + text[pos:], counts


def redact_texts(texts: Iterable[str], kinds: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Redact many texts; returns them and a report: replacements per kind (every configured
    kind listed, zeros included) and how many texts changed."""
    kinds = check_kinds(kinds)
    total: Counter[str] = Counter()
    out, changed = [], 0
    for text in texts:
        new, counts = redact(text, kinds)
        total.update(counts)
        changed += bool(counts)
        out.append(new)
    return out, {"kinds": list(kinds), "replacements": {k: int(total[k]) for k in kinds},
                 "rows_changed": changed}
