"""The vectorised near-duplicate rule (tasks/shard/neardup.py) against its spec, the datasketch
reference (one MinHash and one LSH insert/query per text): same shingle hashes, identical
signatures, same groups. Tiny synthetic texts, in-process."""

from __future__ import annotations

import numpy as np
from datasketch import MinHash, MinHashLSH

from tasks.shard.neardup import (
    all_shingle_hashes,
    lsh_edges,
    minhash_signatures,
    near_duplicate_groups,
    near_duplicate_groups_reference,
    shingle_hashes,
)
from tests.unit.test_evidence import _texts, _variants

ODD = ["", "!!!", "one", "Two words", "a b c", "A B C d", "snake_case and 42 digits",
       "Café crème, naïve Zoë", "İstanbul ΣΊΣΥΦΟΣ straße", "tab\tand\nnewline\x1fcontrol",
       "emoji 🙂 between words 🙂", "① circled ② numbers ③ here", "ＦＵＬＬ width ＴＥＸＴ", "lone \udc80 surrogate",
       "K\u212a Kelvin e\u0301 combining"]


def _corpus() -> list[str]:
    base = _texts(60, seed=3)
    return base + [v for t in base[:20] for v in _variants(t)] + ODD + [ODD[7] + " again"]


def test_shingle_hashes_of_all_texts_equal_the_per_text_rule():
    texts = _corpus()
    for k in (1, 3, 5):
        hashes, counts = all_shingle_hashes(texts, k)
        assert counts.sum() == len(hashes)
        ends, cache = np.cumsum(counts), {}
        for i, text in enumerate(texts):
            mine = np.unique(hashes[ends[i] - counts[i]:ends[i]]).astype(np.uint64)
            assert np.array_equal(mine, shingle_hashes(text, k, cache)), (k, text)
    rng = np.random.default_rng(0)  # random mixes of ASCII, accents, marks, digits, punctuation
    alphabet = list("aB9_ .,!\t\n-'") + ["é", "İ", "ß", "\u0301", "①", "٣", "\u212a", "🙂", "Σ"]
    noisy = ["".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(300)]
    hashes, counts = all_shingle_hashes(noisy, 2)
    ends, cache = np.cumsum(counts), {}
    for i, text in enumerate(noisy):
        mine = np.unique(hashes[ends[i] - counts[i]:ends[i]]).astype(np.uint64)
        assert np.array_equal(mine, shingle_hashes(text, 2, cache)), text
    _, counts = all_shingle_hashes(["", "!!!", "one", "a b", "a b c", "a b c d e"], 3)
    assert counts.tolist() == [0, 0, 1, 1, 1, 3]


def test_signatures_are_identical_to_datasketch():
    texts = _corpus()
    hashes, counts = all_shingle_hashes(texts, 3)
    sigs = minhash_signatures(hashes, counts, 128, seed=1)
    assert sigs.shape == (int((counts > 0).sum()), 128) and sigs.dtype == np.uint32
    proto, cache = MinHash(num_perm=128, seed=1), {}
    with_shingles = [t for t, c in zip(texts, counts, strict=True) if c > 0]
    for row, text in enumerate(with_shingles):
        m = MinHash(num_perm=128, seed=1, hashfunc=int, permutations=proto.permutations,
                    scheme=proto.scheme)
        m.update_batch(shingle_hashes(text, 3, cache).tolist())
        assert np.array_equal(m.hashvalues, sigs[row]), text


def test_lsh_edges_link_exactly_the_pairs_datasketch_returns():
    texts = _corpus()
    hashes, counts = all_shingle_hashes(texts, 3)
    sigs = minhash_signatures(hashes, counts, 64, seed=7)
    lsh = MinHashLSH(threshold=0.5, num_perm=64)
    for i, s in enumerate(sigs):
        lsh.insert(i, MinHash(num_perm=64, hashvalues=s, scheme="affine32"))
    expected = {frozenset((i, j)) for i, s in enumerate(sigs)
                for j in lsh.query(MinHash(num_perm=64, hashvalues=s, scheme="affine32")) if i != j}
    edges = lsh_edges(sigs, 0.5, 64)
    assert len(expected) > 20
    # each bucket member is linked to its first member: the same components, not the same pairs
    assert {frozenset(map(int, e)) for e in edges} <= expected
    closure = near_duplicate_groups(texts, 0.5, 3, 64, seed=7)
    rows = np.flatnonzero(counts > 0)
    assert all(closure[rows[i]] == closure[rows[j]] for i, j in map(tuple, expected))


def test_groups_equal_the_datasketch_reference():
    texts = _corpus()
    for threshold, k, num_perm in ((0.7, 3, 128), (0.5, 2, 64), (0.9, 1, 32)):
        fast = near_duplicate_groups(texts, threshold, k, num_perm)
        assert np.array_equal(fast, near_duplicate_groups_reference(texts, threshold, k,
                                                                    num_perm))
    groups = near_duplicate_groups(texts, 0.7, 3, 128)
    for i in range(20):  # every planted variant joins its original (the smaller row index)
        assert groups[60 + 3 * i: 63 + 3 * i].tolist() == [i, i, i]
    assert np.unique(groups[:60]).size == 60  # unrelated texts stay apart


def test_a_tiny_case_gives_the_known_groups():
    fox = "the quick brown fox jumps over the lazy dog"
    texts = [fox, "", fox + " !!", "x y", "X Y", "a lazy dog jumps over the quick brown cat"]
    assert near_duplicate_groups(texts, 0.7, 3, 128).tolist() == [0, 1, 0, 3, 3, 5]
    assert near_duplicate_groups_reference(texts, 0.7, 3, 128).tolist() == [0, 1, 0, 3, 3, 5]
    assert near_duplicate_groups([], 0.7, 3, 128).tolist() == []
    assert near_duplicate_groups(["", "..."], 0.7, 3, 128).tolist() == [0, 1]
