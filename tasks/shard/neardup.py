"""Near-duplicate groups for the split: MinHash signatures of word shingles, LSH candidate pairs,
connected components into groups. A whole group gets one split, so an edited copy of a text
(a changed name, trailing punctuation) never sits on both sides of train/test.

`near_duplicate_groups` computes datasketch's exact signatures and LSH bands for all texts at once
in numpy (IMDb's 50k reviews: seconds); `near_duplicate_groups_reference`, one datasketch MinHash
and LSH insert/query per text, is the spec it is tested against (it took most of an IMDb flow)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: order-sensitive mixing of the words of a shingle
_NON_WORD = re.compile(r"\W+")
# UTF-8 byte -> itself lowercased if it belongs to a word, else a space: ASCII word characters are
# [A-Za-z0-9_] (what \w matches in ASCII); bytes >= 0x80 only occur, after _NON_WORD, in words
_WORD_BYTE = bytes(ord(chr(c).lower()) if chr(c).isalnum() or c == 0x5F else 0x20
                   for c in range(128)) + bytes(range(128, 256))
_SCHEME = "affine32"  # datasketch MinHash permutation scheme (its 2.0 default) the signatures use


def _word_key(word: str) -> int:
    """A stable 64-bit key of a word (the same in every process and data set)."""
    return _byte_key(word.encode())


def _byte_key(word: bytes) -> int:
    """`_word_key` of a UTF-8 encoded word."""
    return int.from_bytes(hashlib.blake2b(word, digest_size=8).digest(), "big")


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
    """Union-find root with path halving (the reference implementation's)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def near_duplicate_groups_reference(texts: Sequence[str], threshold: float, shingle_words: int,
                                    num_perm: int, seed: int = 1) -> np.ndarray:
    """The spec of `near_duplicate_groups`: one datasketch MinHash and one MinHashLSH insert and
    query per text, union-find over the candidates. Kept for tests and benchmarks/neardup.py
    (which check the fast version returns the same groups); ~1-2.5 ms a review, too slow for
    the flow (IMDb: 60-128 s on this loaded machine)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    proto = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME)
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


def all_shingle_hashes(texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every text's k-word shingle hashes at once, the same values as `shingle_hashes` (not
    deduplicated: a minimum does not care). Returns (hashes uint32 [total], counts int64 [texts]);
    text i owns hashes[sum(counts[:i]) : sum(counts[:i+1])]. Words are found over the UTF-8 bytes
    of all texts at once in numpy (a non-ASCII text first has its lowercased non-word runs
    replaced by a space, by the regex); one blake2b per distinct word; the k-word mixing in numpy
    over all words together."""
    import pyarrow as pa

    prepared = [t if t.isascii() else _NON_WORD.sub(" ", t.lower()) for t in texts]
    arr = pa.array(prepared, type=pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[:len(texts) + 1]
    data = np.frombuffer(arr.buffers()[2] or b"", dtype=np.uint8)[:offsets[-1]]
    mapped = np.frombuffer(_WORD_BYTE, dtype=np.uint8)[data]
    word = mapped != 0x20
    begins, ends = word.copy(), word.copy()
    begins[1:] &= ~word[:-1]
    ends[:-1] &= ~word[1:]
    text_starts = offsets[:-1][offsets[:-1] < len(word)]
    begins[text_starts] = word[text_starts]  # no word runs on from one text into the next
    text_lasts = offsets[1:][offsets[1:] > offsets[:-1]] - 1
    ends[text_lasts] = word[text_lasts]
    first = np.flatnonzero(begins)
    word_offsets = np.concatenate([[0], np.cumsum(np.flatnonzero(ends) + 1 - first)])
    words = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(first), [None, pa.py_buffer(word_offsets),
                                        pa.py_buffer(np.ascontiguousarray(mapped[word]))])
    lengths = np.bincount(np.searchsorted(offsets, first, side="right") - 1,
                          minlength=len(texts))
    return _mix_shingles(_keys_of(words), lengths, k)


def _keys_of(words) -> np.ndarray:
    """`_word_key` of every word of a pyarrow binary array: one blake2b per distinct word."""
    encoded = words.dictionary_encode()
    vocab = encoded.dictionary.to_pylist()
    keys = np.fromiter(map(_byte_key, vocab), dtype=np.uint64, count=len(vocab))
    return keys[encoded.indices.to_numpy(zero_copy_only=False)]


def _mix_shingles(keys: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`shingle_hashes`'s mixing over the concatenated word keys of all texts (uint64 [words];
    lengths: words per text): after step j, position i holds the mix of words i..i+j. A text of
    L >= k words keeps its first L-k+1 positions; a shorter one keeps one shingle, its first
    position after step L-1. Returns (hashes uint32, shingles per text)."""
    starts = np.cumsum(lengths) - lengths
    short = np.flatnonzero((lengths > 0) & (lengths < k))
    fixed = np.empty(len(short), dtype=np.uint64)
    acc, n = keys.copy(), len(keys)
    for j in range(k):
        if j:
            acc[:n - j] *= np.uint64(_MIX)
            acc[:n - j] ^= keys[j:]
        done = lengths[short] == j + 1
        fixed[done] = acc[starts[short[done]]]
    acc[starts[short]] = fixed
    counts = np.where(lengths > 0, np.maximum(lengths - k + 1, 1), 0)
    keep = (np.arange(n) - np.repeat(starts, lengths)) < np.repeat(counts, lengths)
    return (acc[keep] & np.uint64(0xFFFFFFFF)).astype(np.uint32), counts


def minhash_signatures(hashes: np.ndarray, counts: np.ndarray, num_perm: int,
                       seed: int = 1) -> np.ndarray:
    """MinHash signatures (uint32 [texts with a shingle, num_perm]) of every text at once,
    identical to datasketch's `MinHash(num_perm, seed)` (scheme affine32: MurmurHash3 fmix32
    pre-mix, then h*a + b mod 2^32 with datasketch's own permutations) fed the same hashes.
    One permutation at a time over all shingles, minimum per text by `np.minimum.reduceat`
    (memory: two uint32 copies of the shingle hashes)."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
    mixed = _fmix32(hashes)
    counts = counts[counts > 0]
    starts = np.cumsum(counts) - counts
    out = np.empty((num_perm, len(counts)), dtype=np.uint32)
    if not len(counts):
        return out.T
    permuted = np.empty_like(mixed)
    for p in range(num_perm):
        np.multiply(mixed, a[p], out=permuted)
        permuted += b[p]
        out[p] = np.minimum.reduceat(permuted, starts)
    return np.ascontiguousarray(out.T)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch's affine32 scheme applies."""
    from datasketch.minhash import _fmix

    return _fmix(h.astype(np.uint32), 32)


def lsh_edges(sigs: np.ndarray, threshold: float, num_perm: int) -> np.ndarray:
    """Candidate pairs (int64 [edges, 2], signature row numbers) of MinHash LSH: rows whose
    signatures agree on every value of at least one band, with datasketch's optimal
    (bands, rows) for threshold/num_perm and equal weights. Each member of a band bucket is
    linked to the bucket's first member, which is enough for the connected components."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    edges = []
    for i in range(bands):
        band = np.ascontiguousarray(sigs[:, i * rows:(i + 1) * rows])
        keys = band.view(np.dtype((np.void, band.dtype.itemsize * rows))).ravel()
        _, first, bucket = np.unique(keys, return_index=True, return_inverse=True)
        head = first[bucket.ravel()]
        linked = head != np.arange(len(head))
        edges.append(np.column_stack([np.flatnonzero(linked), head[linked]]))
    return np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)


def near_duplicate_groups(texts: Sequence[str], threshold: float, shingle_words: int,
                          num_perm: int, seed: int = 1) -> np.ndarray:
    """Group id per text (int64, the smallest row index of its group): texts whose estimated
    Jaccard similarity of word shingles reaches `threshold` are linked (MinHash LSH), and links
    are closed transitively. Rows without shingles are their own group. The same groups as
    `near_duplicate_groups_reference` (datasketch, one object per text), computed for all texts
    at once in numpy: IMDb's 50k reviews in seconds instead of minutes."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(texts)
    hashes, counts = all_shingle_hashes(texts, shingle_words)
    rows = np.flatnonzero(counts > 0)  # signature row -> text row
    edges = rows[lsh_edges(minhash_signatures(hashes, counts, num_perm, seed), threshold,
                           num_perm)]
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])),
                       shape=(n, n))
    _, label = connected_components(graph, directed=False)
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, label, np.arange(n, dtype=np.int64))
    log.debug("near-duplicate groups: %d texts, %d LSH links", n, len(edges))
    return smallest[label]


def canonical_members(texts: Sequence[str], groups: np.ndarray) -> list[str]:
    """Per row, its group's canonical text: the smallest text of the group (a content rule, not a
    row order, so the same group gets the same canonical member however the data was read)."""
    best: dict[int, str] = {}
    for g, t in zip(groups.tolist(), texts, strict=True):
        if g not in best or t < best[g]:
            best[g] = t
    return [best[g] for g in groups.tolist()]
