"""Near-duplicate groups for the split: MinHash signatures of word shingles, LSH candidate pairs
(datasketch), union-find into groups. A whole group gets one split, so an edited copy of a text
(a changed name, trailing punctuation) never sits on both sides of train/test."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: order-sensitive mixing of the words of a shingle


def _word_key(word: str) -> int:
    """A stable 64-bit key of a word (the same in every process and data set)."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")


def shingle_hashes(text: str, k: int, cache: dict[str, int]) -> np.ndarray:
    """The distinct 32-bit hashes of a text's k-word shingles (lowercased words; punctuation
    ignored), computed in numpy from stable per-word keys (`cache` memoises them across texts).
    A text of at most k words is one shingle; a text without words has none."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(0, dtype=np.uint64)
    keys = np.array([cache[w] if w in cache else cache.setdefault(w, _word_key(w))
                     for w in words], dtype=np.uint64)
    n = max(len(keys) - k + 1, 1)
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(min(k, len(keys))):
        acc = (acc * np.uint64(_MIX)) ^ keys[j:j + n]
    return np.unique(acc & np.uint64(0xFFFFFFFF))


def _find(parent: np.ndarray, i: int) -> int:
    """Union-find root with path halving."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def near_duplicate_groups(texts: Sequence[str], threshold: float, shingle_words: int,
                          num_perm: int, seed: int = 1) -> np.ndarray:
    """Group id per text (int64, the smallest row index of its group): texts whose estimated
    Jaccard similarity of word shingles reaches `threshold` are linked (MinHash LSH), and links
    are closed transitively. Rows without shingles are their own group. O(n) signatures + LSH
    queries; ~1 ms a text of a few hundred words."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    proto = MinHash(num_perm=num_perm, seed=seed)  # permutations drawn once, shared by all
    cache: dict[str, int] = {}
    sigs: list[MinHash | None] = []
    for i, text in enumerate(texts):
        hv = shingle_hashes(text, shingle_words, cache)
        if not len(hv):
            sigs.append(None)
            continue
        m = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, permutations=proto.permutations,
                    scheme=proto.scheme)
        m.update_batch(hv.tolist())
        lsh.insert(i, m, check_duplication=False)
        sigs.append(m)
    parent = np.arange(len(texts), dtype=np.int64)
    for i, m in enumerate(sigs):
        if m is None:
            continue
        for j in lsh.query(m):
            a, b = _find(parent, i), _find(parent, int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([_find(parent, i) for i in range(len(texts))], dtype=np.int64)


def canonical_members(texts: Sequence[str], groups: np.ndarray) -> list[str]:
    """Per row, its group's canonical text: the smallest text of the group (a content rule, not a
    row order, so the same group gets the same canonical member however the data was read)."""
    best: dict[int, str] = {}
    for g, t in zip(groups.tolist(), texts, strict=True):
        if g not in best or t < best[g]:
            best[g] = t
    return [best[g] for g in groups.tolist()]
