"""Exact explanations of the linear baseline: the logit of a class is a sum over the n-gram
columns of (weight x feature value) plus the intercept, so each n-gram's share is exact.

The feature value already holds everything between the counts and the logit: sublinear tf, idf,
the per-block l2 norm and the block weight (char_weight); the NB log-count ratio is folded into
the classifier's coef_. Each column is then mapped back to the character spans of its
occurrences in the text, so contributions + intercept reproduce decision_function (to float
rounding) and every contribution points at characters.

Works for the pipelines train writes (FeatureUnion of [counter -> TfidfTransformer] blocks, our
counters or CountVectorizer; NBLogisticRegression) and for a plain TfidfVectorizer/CountVectorizer
+ linear model pipeline. Spans index the text given to `explain_linear` (the normalised text:
textloop.pipeline.models maps them back to the text the user sent)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline

from tasks.train.ngrams import TOKEN_PATTERN, CharWbNgramCounter, WordNgramCounter
from textloop.core.textspans import lower_with_offsets, source_span

_PIECE = re.compile(TOKEN_PATTERN)  # highlight units: words, CJK characters, punctuation marks


class ExplainUnsupported(ValueError):
    """The model is not one this module can decompose exactly (e.g. a custom analyzer)."""


@dataclass(frozen=True)
class Block:
    """One feature block: its name, the n-gram counter inside it, and its first column."""

    name: str
    counter: Any
    offset: int
    vocab: dict[str, int]  # n-gram -> column inside the block


class Occurrence(NamedTuple):
    """One n-gram found in the (lowercased) text: its name, and the character ranges its weight
    is spread over (one per word of a word n-gram, one for a char n-gram)."""

    gram: str
    ranges: tuple[tuple[int, int], ...]


# --- the model's blocks and their vocabularies -------------------------------------------------

def word_vocabulary(counter: WordNgramCounter) -> dict[str, int]:
    """Column of every n-gram of a fitted WordNgramCounter (its codes chain level by level:
    code = rank of the (n-1)-gram prefix * n_tokens + token id)."""
    tokens = list(counter.tokens_)  # dict order is id order
    levels, base = [tokens], len(tokens)
    for codes in counter.codes_[1:]:
        prefix, last = np.divmod(np.asarray(codes, dtype=np.int64), base)
        prev = levels[-1]
        levels.append([f"{prev[p]} {tokens[t]}" for p, t in zip(prefix.tolist(), last.tolist())])
    names = [name for level in levels for name in level]
    if counter.columns_ is not None:
        names = [names[i] for i in counter.columns_]
    return {name: col for col, name in enumerate(names)}


def vocabulary(counter: Any) -> dict[str, int]:
    """n-gram -> column of a fitted counter (ours or scikit-learn's)."""
    if isinstance(counter, WordNgramCounter):
        return word_vocabulary(counter)
    if isinstance(counter, CharWbNgramCounter):
        return dict(counter.grams_)
    if isinstance(counter, CountVectorizer):
        if counter.tokenizer is not None or counter.preprocessor is not None or \
                counter.strip_accents is not None or callable(counter.analyzer):
            raise ExplainUnsupported("custom tokenizer/preprocessor/accents: cannot locate n-grams")
        return {str(k): int(v) for k, v in counter.vocabulary_.items()}
    raise ExplainUnsupported(f"unknown n-gram counter {type(counter).__name__}")


def block_width(counter: Any) -> int:
    """Number of columns a fitted counter produces (without building its vocabulary)."""
    if isinstance(counter, WordNgramCounter):
        if counter.columns_ is not None:
            return len(counter.columns_)
        return len(counter.tokens_) + sum(len(c) for c in counter.codes_[1:])
    if isinstance(counter, CharWbNgramCounter):
        return len(counter.grams_)
    return len(counter.vocabulary_)


def gram_names(counter: Any, cols: Sequence[int]) -> list[str]:
    """The n-grams of a few columns of a fitted counter (decoded one by one: the global view
    of a large model must not build its whole vocabulary)."""
    if isinstance(counter, CharWbNgramCounter):
        names = list(counter.grams_)
        return [names[c] for c in cols]
    if not isinstance(counter, WordNgramCounter):
        names = counter.get_feature_names_out()
        return [str(names[c]) for c in cols]
    tokens, base = list(counter.tokens_), len(counter.tokens_)
    sizes = np.cumsum([base] + [len(c) for c in counter.codes_[1:]])

    def decode(level: int, rank: int) -> str:
        if level == 0:
            return tokens[rank]
        prefix, last = divmod(int(counter.codes_[level][rank]), base)
        return f"{decode(level - 1, prefix)} {tokens[last]}"

    out = []
    for col in cols:
        j = int(counter.columns_[col]) if counter.columns_ is not None else int(col)
        level = int(np.searchsorted(sizes, j, side="right"))
        out.append(decode(level, j - (int(sizes[level - 1]) if level else 0)))
    return out


def _counter(block: Any) -> Any:
    """The counter at the start of a block (a [counts, tfidf] Pipeline or a vectorizer)."""
    return block.steps[0][1] if isinstance(block, Pipeline) else block


def blocks_of(features: Any) -> list[Block]:
    """The feature blocks of a fitted feature step, in column order."""
    parts = (features.transformer_list if isinstance(features, FeatureUnion)
             else [("word", features)])
    out, offset = [], 0
    for name, block in parts:
        counter = _counter(block)
        vocab = vocabulary(counter)
        out.append(Block(name, counter, offset, vocab))
        offset += len(vocab)
    return out


# --- where each n-gram occurs ------------------------------------------------------------------

def _word_settings(counter: Any) -> tuple[str, int, int, frozenset[str]]:
    """(token pattern, min n, max n, stop words) of a word counter."""
    if isinstance(counter, WordNgramCounter):
        return counter.token_pattern, 1, counter.ngram_max, frozenset()
    lo, hi = counter.ngram_range
    return counter.token_pattern, lo, hi, frozenset(counter.get_stop_words() or ())


def word_occurrences(text: str, counter: Any) -> Iterator[Occurrence]:
    """Word n-grams as the counter forms them (tokens joined by one space), with token ranges."""
    pattern, lo, hi, stop = _word_settings(counter)
    toks = [(m.group(), m.start(), m.end()) for m in re.finditer(pattern, text)
            if m.group() not in stop]
    for n in range(lo, hi + 1):
        for i in range(len(toks) - n + 1):
            window = toks[i:i + n]
            yield Occurrence(" ".join(t for t, _, _ in window),
                             tuple((a, b) for _, a, b in window))


def char_wb_occurrences(text: str, lo: int, hi: int) -> Iterator[Occurrence]:
    """char_wb n-grams (each word padded with one space each side; a word shorter than n counted
    once, whole), each spread over the word characters it covers."""
    for m in re.finditer(r"\S+", text):
        word, start = m.group(), m.start()
        padded = f" {word} "
        for n in range(lo, hi + 1):
            if len(padded) <= n:
                yield Occurrence(padded, ((start, m.end()),))
                break
            for i in range(len(padded) - n + 1):
                a, b = max(i - 1, 0), min(i - 1 + n, len(word))
                yield Occurrence(padded[i:i + n], ((start + a, start + b),))


def char_occurrences(text: str, lo: int, hi: int) -> Iterator[Occurrence]:
    """Plain char n-grams over the whole (whitespace-collapsed) text."""
    for n in range(lo, hi + 1):
        for i in range(len(text) - n + 1):
            yield Occurrence(text[i:i + n], ((i, i + n),))


def occurrences(text: str, counter: Any) -> Iterator[Occurrence]:
    """Every n-gram occurrence the counter would count in `text` (already lowercased)."""
    if isinstance(counter, WordNgramCounter):
        return word_occurrences(text, counter)
    if isinstance(counter, CharWbNgramCounter):
        return char_wb_occurrences(text, *counter.ngram_range)
    analyzer = counter.analyzer
    if analyzer == "word":
        return word_occurrences(text, counter)
    if analyzer == "char_wb":
        return char_wb_occurrences(re.sub(r"\s\s+", " ", text), *counter.ngram_range)
    return char_occurrences(re.sub(r"\s\s+", " ", text), *counter.ngram_range)


def _lowercases(counter: Any) -> bool:
    """Our counters always lowercase; CountVectorizer when lowercase=True."""
    return bool(getattr(counter, "lowercase", True))


# --- the explanation ---------------------------------------------------------------------------

def class_weights(coef: np.ndarray, intercept: np.ndarray, n_classes: int,
                  k: int) -> tuple[np.ndarray, float]:
    """(weights, intercept) whose X @ w + b is class k's logit (decision_function): a binary
    model stores one row, the logit of classes_[1]; classes_[0]'s is its negation."""
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64).ravel()
    if coef.shape[0] == 1 and n_classes == 2:
        sign = 1.0 if k == 1 else -1.0
        return sign * coef[0], sign * float(intercept[0])
    return coef[k], float(intercept[k])


def finish(result: dict[str, Any], features: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
    """Add the feature list (largest |weight| first) and the top_k for and against the class."""
    features = sorted(features, key=lambda f: -abs(f["weight"]))
    result["features"] = features
    result["top_for"] = sorted((f for f in features if f["weight"] > 0),
                               key=lambda f: -f["weight"])[:top_k]
    result["top_against"] = sorted((f for f in features if f["weight"] < 0),
                                   key=lambda f: f["weight"])[:top_k]
    return result


def pieces(text: str, lowered: str, spans: Sequence[tuple[int, int]],
           char_weight: np.ndarray) -> list[dict[str, Any]]:
    """Highlight units of `lowered` (words, CJK characters, punctuation) with the weight spread
    on their characters, as [start, end) ranges of `text` (spans: lowered -> text); units without
    weight are kept (weight 0) so the text can be shown whole."""
    out = []
    for m in _PIECE.finditer(lowered):
        a, b = source_span(spans, m.start(), m.end())
        out.append({"start": a, "end": b, "text": text[a:b],
                    "weight": float(char_weight[m.start():m.end()].sum())})
    return out


class LinearExplainer:
    """Exact per-n-gram contributions of a fitted [features, linear classifier] pipeline."""

    def __init__(self, pipeline: Pipeline):
        if len(pipeline.steps) != 2 or not hasattr(pipeline.steps[-1][1], "coef_"):
            raise ExplainUnsupported("expected a [features, linear classifier] pipeline")
        self.features, self.clf = pipeline.steps[0][1], pipeline.steps[-1][1]
        self.classes = [str(c) for c in self.clf.classes_]
        self.blocks = blocks_of(self.features)
        self.offsets = np.array([b.offset for b in self.blocks])

    def explain(self, text: str, top_k: int = 10, target: str | None = None) -> dict[str, Any]:
        """Contributions of every n-gram present to one class's logit (the predicted class
        unless `target`): sum(weights) + intercept == decision_function to float rounding.
        Shapes: features[i] = {feature, block, weight, value, spans: [[start, end], ...]};
        spans[i] = {start, end, text, weight}: the text's words with the weight on them.

        Raises ValueError for an unknown target class."""
        X = self.features.transform([text]).tocsr()
        proba = np.asarray(self.clf.predict_proba(X), dtype=float)[0]
        k = int(proba.argmax()) if target is None else self.classes.index(target)
        w, b = class_weights(self.clf.coef_, self.clf.intercept_, len(self.classes), k)
        cols, values = X.indices, X.data.astype(np.float64)
        contrib = values * w[cols]
        lowered, spans, found = self._locate(text)
        block_of = np.searchsorted(self.offsets, cols, side="right") - 1
        cuts: list[int] = []  # char weights as a difference array: +v at a, -v at b
        amounts: list[float] = []
        features = []
        for col, bi, value, c in zip(cols.tolist(), block_of.tolist(), values.tolist(),
                                     contrib.tolist()):
            if c != 0.0:
                features.append(self._feature(col, bi, value, c, found.get(col, ()), spans,
                                              text, cuts, amounts))
        char_weight = np.cumsum(np.bincount(np.asarray(cuts, dtype=np.int64), weights=amounts,
                                            minlength=len(lowered) + 1))[:-1]
        score = self.logit(X, k)
        result = {"kind": "sklearn", "method": "exact", "classes": self.classes,
                  "proba": proba.tolist(), "label": self.classes[int(proba.argmax())],
                  "target": self.classes[k], "base": b, "score": score,
                  "completeness_error": abs(float(contrib.sum()) + b - score),
                  "spans": pieces(text, lowered, spans, char_weight),
                  "unlocated_weight": float(sum(f["weight"] for f in features if not f["spans"]))}
        return finish(result, features, top_k)

    def logit(self, X: Any, k: int) -> float:
        """Class k's logit from the classifier itself (the number the contributions must add to)."""
        df = np.asarray(self.clf.decision_function(X), dtype=np.float64)
        if df.ndim == 1:
            return float(df[0]) if k == 1 else -float(df[0])
        return float(df[0, k])

    def _locate(self, text: str) -> tuple[str, list[tuple[int, int]], dict[int, list[Occurrence]]]:
        """The lowercased text, its offsets into `text`, and column -> occurrences."""
        lowered, spans = lower_with_offsets(text)
        found: dict[int, list[Occurrence]] = {}
        for block in self.blocks:
            seen = lowered if _lowercases(block.counter) else text
            get = block.vocab.get
            for occ in occurrences(seen, block.counter):
                col = get(occ.gram)
                if col is not None:
                    found.setdefault(block.offset + col, []).append(occ)
        return lowered, spans, found

    def _feature(self, col: int, bi: int, value: float, contrib: float,
                 occs: Sequence[Occurrence], spans: Sequence[tuple[int, int]], text: str,
                 cuts: list[int], amounts: list[float]) -> dict[str, Any]:
        """One column: its n-gram, block, value, contribution and the spans of its occurrences
        (the contribution spread evenly over them, then over their characters: appended to
        the difference array cuts/amounts)."""
        block = self.blocks[bi]
        for occ in occs:
            share = contrib / len(occs) / len(occ.ranges)
            for a, b in occ.ranges:
                per_char = share / max(b - a, 1)
                cuts += (a, b)
                amounts += (per_char, -per_char)
        out_spans = [list(source_span(spans, o.ranges[0][0], o.ranges[-1][1])) for o in occs]
        gram = occs[0].gram if occs else gram_names(block.counter, [col - block.offset])[0]
        return {"feature": gram, "block": block.name, "value": value, "weight": contrib,
                "spans": out_spans, "text": [text[a:b] for a, b in out_spans]}


def global_view(pipeline: Pipeline, top_k: int) -> dict[str, Any]:
    """Per class, the top_k n-grams with the largest and the smallest weight in its logit
    (weight per unit of the block's tf-idf value: coef x block weight, NB ratio included).
    Shape: {kind, top_k, classes: {class: {for: [[block:gram, weight]], against: [...]}}}."""
    features, clf = pipeline.steps[0][1], pipeline.steps[-1][1]
    parts = (features.transformer_list if isinstance(features, FeatureUnion)
             else [("word", features)])
    weights = getattr(features, "transformer_weights", None) or {}
    counters = [(name, _counter(block)) for name, block in parts]
    widths = [block_width(c) for _, c in counters]
    scale = np.concatenate([np.full(n, float(weights.get(name, 1.0)))
                            for (name, _), n in zip(counters, widths)])
    offsets = np.concatenate([[0], np.cumsum(widths)])
    classes = [str(c) for c in clf.classes_]

    def named(cols: np.ndarray, w: np.ndarray) -> list[list[Any]]:
        out = []
        for col in cols.tolist():
            i = int(np.searchsorted(offsets, col, side="right") - 1)
            name, counter = counters[i]
            out.append([f"{name}:{gram_names(counter, [col - int(offsets[i])])[0]}", float(w[col])])
        return out

    out = {}
    for k, cls in enumerate(classes):
        w = class_weights(clf.coef_, clf.intercept_, len(classes), k)[0] * scale
        top, low = np.argsort(-w, kind="stable")[:top_k], np.argsort(w, kind="stable")[:top_k]
        out[cls] = {"for": named(top[w[top] > 0], w), "against": named(low[w[low] < 0], w)}
    return {"kind": "sklearn", "top_k": top_k, "classes": out}
