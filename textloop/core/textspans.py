"""Character offsets through the text normalisation: where each character of
normalize_text(text) came from in `text`, so an explanation computed on the normalised text can
point at the characters the user sent (HTML, entities, extra spaces, invisible characters).

The rule itself stays in textloop.core.text.normalize_text; this module replays its steps while
carrying, for every output character, the (start, end) range of input characters it came from,
and checks its result against normalize_text on every call."""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence

from textloop.core import text as _rule

log = logging.getLogger(__name__)

Spans = list[tuple[int, int]]  # per output character: [start, end) in the input
# html.unescape's own pattern (CPython Lib/html/__init__.py): unescaping match by match gives
# exactly what html.unescape gives for the whole string
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


def _sub(s: str, spans: Spans, pattern: re.Pattern[str],
         repl: Callable[[re.Match[str]], str]) -> tuple[str, Spans]:
    """pattern.sub(repl, s) with offsets: each replacement character spans its whole match."""
    out: list[str] = []
    out_spans: Spans = []
    pos = 0
    for m in pattern.finditer(s):
        if m.end() == m.start():
            continue
        out.append(s[pos:m.start()])
        out_spans.extend(spans[pos:m.start()])
        new = repl(m)
        out.append(new)
        out_spans.extend([(spans[m.start()][0], spans[m.end() - 1][1])] * len(new))
        pos = m.end()
    out.append(s[pos:])
    out_spans.extend(spans[pos:])
    return "".join(out), out_spans


def _per_char(s: str, spans: Spans, fn: Callable[[str], str]) -> tuple[str, Spans]:
    """Apply fn to every character (it may delete it or expand it), keeping offsets."""
    out: list[str] = []
    out_spans: Spans = []
    for ch, span in zip(s, spans):
        new = fn(ch)
        out.append(new)
        out_spans.extend([span] * len(new))
    return "".join(out), out_spans


def _nfc(s: str, spans: Spans) -> tuple[str, Spans]:
    """NFC per cluster (a starter and the combining marks after it), each output character
    spanning its cluster."""
    if unicodedata.is_normalized("NFC", s):
        return s, spans
    out: list[str] = []
    out_spans: Spans = []
    i = 0
    while i < len(s):
        j = i + 1
        while j < len(s) and unicodedata.combining(s[j]):
            j += 1
        new = unicodedata.normalize("NFC", s[i:j])
        out.append(new)
        out_spans.extend([(spans[i][0], spans[j - 1][1])] * len(new))
        i = j
    return "".join(out), out_spans


_INVISIBLE: dict[int, None] | None = None


def _visible(ch: str) -> str:
    """The character, or "" when normalize_text deletes it (format/control characters)."""
    global _INVISIBLE
    if _INVISIBLE is None:
        _INVISIBLE = _rule._invisible()
    return "" if ord(ch) in _INVISIBLE else ch


def normalize_with_offsets(text: object, strip_html: bool = True,
                           lowercase: bool = False) -> tuple[str, Spans]:
    """(normalize_text(text, strip_html, lowercase), spans): spans[i] is the [start, end) range
    of `text` that output character i came from (a tag or an entity: the whole of it).

    When the replay ever disagrees with normalize_text, the normalised text is still returned
    (the model must see exactly that) and every character spans the whole input (logged)."""
    if not isinstance(text, str):
        return "", []
    s, spans = text, [(i, i + 1) for i in range(len(text))]
    if strip_html:
        s, spans = _sub(s, spans, _rule._TAG, lambda m: " ")
        s, spans = _sub(s, spans, _CHARREF, lambda m: html.unescape(m.group(0)))
    s, spans = _per_char(s, spans, _visible)
    s, spans = _nfc(s, spans)
    s, spans = _sub(s, spans, _rule._WS, lambda m: " ")
    lead, keep = len(s) - len(s.lstrip()), len(s.rstrip())
    s, spans = s[lead:keep], spans[lead:keep]
    if lowercase:
        s, spans = lower_with_offsets(s, spans)
    expected = _rule.normalize_text(text, strip_html=strip_html, lowercase=lowercase)
    if s != expected:
        log.warning("offset replay differs from normalize_text; spans cover the whole text")
        return expected, [(0, len(text))] * len(expected)
    return s, spans


def lower_with_offsets(s: str, spans: Spans | None = None) -> tuple[str, Spans]:
    """s.lower() with offsets (a few characters lowercase to two: 'İ' -> 'i̇')."""
    spans = [(i, i + 1) for i in range(len(s))] if spans is None else spans
    if s.lower() == s:
        return s, spans
    lowered = s.lower()  # context-sensitive (final sigma): the lengths per character still hold
    out, out_spans = _per_char(s, spans, str.lower)
    if len(out) == len(lowered):
        return lowered, out_spans
    whole = (spans[0][0], spans[-1][1])
    return lowered, [whole] * len(lowered)


def source_span(spans: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The input range behind output characters [start, end) (end > start)."""
    return spans[start][0], spans[end - 1][1]
