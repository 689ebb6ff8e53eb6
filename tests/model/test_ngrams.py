"""The n-gram counter switch: train.tfidf.vectorizer fast (ours) and sklearn (CountVectorizer)
give the same vocabulary and tf-idf matrices (up to column order) and the same model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer

from tasks.train.baseline import build_features, load_sklearn
from tasks.train.fit import train_model
from tasks.train.ngrams import CharWbNgramCounter, WordNgramCounter, make_counters
from textloop.core.config import Params, TfidfConfig

DOCS = ["great movie, loved it", "wonderful acting and great fun", "I loved the story!",
        "terrible movie, hated it", "awful acting and boring", "I hated the story",
        "Caps AND caps, again!", "我非常喜欢这部电影", "这个故事很无聊很差", "a b  c\tdd", ""]
UNSEEN = ["a great new movie", "Wonderful, wonderful!", "喜欢", ""]


def column_set(matrix) -> list[tuple]:
    """Each column as (rows, rounded values), sorted: a matrix's identity ignoring column order."""
    csc = matrix.tocsc()
    csc.sort_indices()
    return sorted((tuple(csc[:, j].indices), tuple(np.round(csc[:, j].data.astype(float), 6)))
                  for j in range(csc.shape[1]))


def test_the_switch_selects_the_counters():
    assert {k: type(c) for k, c in make_counters(TfidfConfig()).items()} == {
        "word": WordNgramCounter, "char": CharWbNgramCounter}
    sk = make_counters(TfidfConfig(vectorizer="sklearn", word_ngram_max=2, char_ngram_min=3,
                                   char_ngram_max=5, min_df=2, max_features=100))
    assert all(type(c) is CountVectorizer for c in sk.values())
    assert sk["word"].ngram_range == (1, 2) and sk["char"].ngram_range == (3, 5)
    assert sk["char"].analyzer == "char_wb" and sk["word"].min_df == sk["char"].min_df == 2
    assert sk["word"].max_features == 100 and sk["word"].dtype == np.float32


def test_unknown_vectorizer_is_rejected():
    with pytest.raises(ValueError, match="vectorizer"):
        TfidfConfig(vectorizer="spacy")


@pytest.mark.parametrize("min_df", [1, 2])
def test_fast_and_sklearn_give_the_same_tfidf_blocks(min_df):
    fast = dict(build_features(TfidfConfig(min_df=min_df)).transformer_list)
    sk = dict(build_features(TfidfConfig(min_df=min_df, vectorizer="sklearn")).transformer_list)
    for kind in ("word", "char"):
        a, b = fast[kind].fit_transform(DOCS), sk[kind].fit_transform(DOCS)
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        assert column_set(a) == column_set(b)
        assert column_set(fast[kind].transform(UNSEEN)) == column_set(sk[kind].transform(UNSEEN))
    # the char vocabulary itself is the same set of strings
    fast_grams = fast["char"].named_steps["counts"].grams_
    assert set(fast_grams) == set(sk["char"].named_steps["counts"].vocabulary_)
    assert " lov" in fast_grams and ("喜欢" in fast_grams) == (min_df == 1)


def test_both_switch_settings_train_the_same_model(tmp_path):
    df = pd.DataFrame({"text": DOCS[:6] * 2, "label": (["pos"] * 3 + ["neg"] * 3) * 2})
    texts = ["loved it, great fun", "hated it, boring", "a story"]
    proba = {}
    for vec in ("fast", "sklearn"):
        p = Params.model_validate({"train": {"tfidf": {"min_df": 1, "vectorizer": vec}}})
        metrics = train_model(df, df, p, tmp_path / vec)
        assert metrics["accuracy"] == 1.0
        proba[vec] = load_sklearn(tmp_path / vec).predict_proba(texts)
    np.testing.assert_allclose(proba["fast"], proba["sklearn"], atol=1e-6)
    assert list(proba["fast"][:2].argmax(axis=1)) == [1, 0]  # classes_ = [neg, pos]


@pytest.mark.parametrize("make,attr", [(lambda: WordNgramCounter(2), "tokens_"),
                                       (lambda: CharWbNgramCounter((2, 4)), "grams_")])
def test_vocabularies_pickle_packed_and_load_either_way(make, attr):
    """A fitted counter pickles its vocabulary as one string (pack_vocab): it loads back equal,
    in column order, and transforms the same; a pickle from before packing still loads."""
    import pickle

    from tasks.train.ngrams import pack_vocab

    counter = make().fit(DOCS)
    blob = pickle.dumps(counter)
    assert attr not in counter.__getstate__() and f"_packed{attr}" in counter.__getstate__()
    loaded = pickle.loads(blob)
    vocab = getattr(counter, attr)
    assert list(getattr(loaded, attr).items()) == list(vocab.items()) and len(vocab) > 10
    assert (loaded.transform(UNSEEN) != counter.transform(UNSEEN)).nnz == 0
    old = make()
    old.__setstate__(dict(counter.__dict__))  # a state as pickled before packing
    assert getattr(old, attr) == vocab
    shuffled = {**counter.__dict__, attr: dict(reversed(list(vocab.items())))}
    assert pack_vocab(shuffled, attr)[attr] == shuffled[attr]  # not in column order: kept as is


def real_texts(n: int) -> list[str]:
    """n IMDb reviews (real text with HTML, punctuation, long words) from ../shared/data/imdb next
    to the checkout or a folder above it (a worktree); the test skips without them."""
    repo = Path(__file__).resolve().parents[1]
    path = next((p for p in (b / "shared/data/imdb/train.parquet" for b in repo.parents)
                 if p.exists()), None)
    if path is None:
        pytest.skip("IMDb parquet not found next to the checkout")
    return pd.read_parquet(path, columns=["text"])["text"].iloc[:n].tolist()


@pytest.mark.parametrize("max_features", [None, 3000])
def test_transform_equals_the_fit_counts_on_real_text(max_features):
    """transform (cached hash lookups, remapped pruned columns) gives the very matrix the fit
    computed for the same texts, before and after a pickle round trip, one text or many."""
    import pickle

    texts = real_texts(400)
    for counter in (WordNgramCounter(3, min_df=2, max_features=max_features),
                    CharWbNgramCounter((2, 4), min_df=2, max_features=max_features)):
        fitted = counter.fit_transform(texts)
        assert ((counter.transform(texts) != fitted).nnz == 0 and
                (counter.transform(texts) != fitted).nnz == 0)  # first call builds, then reuses
        loaded = pickle.loads(pickle.dumps(counter))
        assert (loaded.transform(texts) != fitted).nnz == 0
        one = sp.vstack([loaded.transform([t]) for t in texts[:20]])
        assert (one != fitted[:20]).nnz == 0


def test_the_lookup_cache_is_built_once_not_pickled_and_dropped_on_refit():
    counter = WordNgramCounter(3, max_features=40).fit(DOCS)
    counter.transform(UNSEEN)
    cache = counter._lookup
    counter.transform(DOCS)
    assert counter._lookup is cache and counter.columns_ is not None
    assert "_lookup" not in counter.__getstate__()
    refit = counter.fit_transform(UNSEEN[:2])
    assert (counter.transform(UNSEEN[:2]) != refit).nnz == 0


def test_fitted_vocabularies_are_fresh_copies_of_the_terms():
    """The kept terms are copied (so they do not pin the fit's token strings in memory): the
    same term -> column mapping, other string objects."""
    from tasks.train.ngrams import fresh_vocab

    terms = ["great film", "fun", "très bien", "", "ab"]
    vocab = fresh_vocab(terms)
    assert vocab == {t: i for i, t in enumerate(terms)} and list(vocab) == terms
    assert not any(a is b for a, b in zip(vocab, terms) if len(a) > 1)
    counter = WordNgramCounter(2).fit(["a great film", "great fun"])
    assert sorted(counter.tokens_) == ["a", "film", "fun", "great"]


@pytest.mark.parametrize("make, vocab", [(lambda: WordNgramCounter(3), "tokens_"),
                                         (lambda: CharWbNgramCounter((2, 4)), "grams_")])
def test_units_split_a_few_documents_at_a_time_give_the_one_pass_ids(monkeypatch, make, vocab):
    """Documents are split into units UNIT_CHUNK at a time (the unit strings of a big corpus
    are not all alive at once); the vocabulary's order, the counts and a transform must be
    those of one pass over all documents, whatever the chunk size."""
    from tasks.train import ngrams

    one_pass = make()
    whole = one_pass.fit_transform(DOCS * 3)
    monkeypatch.setattr(ngrams, "UNIT_CHUNK", 2)
    chunked = make()
    assert list(getattr(chunked.fit(DOCS * 3), vocab).items()) == list(getattr(one_pass, vocab).items())
    assert (chunked.fit_transform(DOCS * 3) != whole).nnz == 0
    assert (chunked.transform(UNSEEN + DOCS) != one_pass.transform(UNSEEN + DOCS)).nnz == 0
