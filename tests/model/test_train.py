"""The CPU baseline: learns tiny separable sets, keeps its contracts, round-trips through disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer

from tasks.train.baseline import NBLogisticRegression, build_baseline, load_sklearn
from tasks.train.fit import train_model
from tasks.train.ngrams import TOKEN_PATTERN, CharWbNgramCounter, WordNgramCounter
from textloop.core.config import Params, TfidfConfig
from textloop.core.model import read_meta
from textloop.pipeline.models import load_classifier

POS = ["great movie, loved it", "wonderful acting and great fun", "I loved the story",
       "fun and wonderful film", "a great great film", "loved every wonderful minute"]
NEG = ["terrible movie, hated it", "awful acting and boring", "I hated the story",
       "boring and awful film", "a terrible terrible film", "hated every boring minute"]
NEU = ["the movie is on tuesday", "a film about a town", "it is a two hour movie",
       "the film opens in march", "the story of a town", "the movie runs on sunday"]
# Chinese without spaces: every text is one whitespace "word", so only character n-grams generalize
ZH_POS = ["我非常喜欢这部电影", "这个故事很好看我喜欢", "演员很棒很好看", "喜欢喜欢真好看",
          "音乐很好看也很棒", "我喜欢这个演员"]
ZH_NEG = ["我讨厌这部电影太无聊", "这个故事很无聊很差", "演员太差了讨厌", "无聊无聊真差劲",
          "音乐很差也很无聊", "我讨厌这个故事"]


def frame(groups: dict[str, list[str]]) -> pd.DataFrame:
    """A text/label frame from label -> texts."""
    rows = [(t, label) for label, texts in groups.items() for t in texts]
    return pd.DataFrame(rows, columns=["text", "label"])


def small_params(**tfidf) -> Params:
    """Default params with min_df=1 (tiny frames) plus overrides."""
    return Params.model_validate({"train": {"tfidf": {"min_df": 1, **tfidf}}})


def fit(groups: dict[str, list[str]], **tfidf):
    """Fit the baseline on a tiny frame."""
    df = frame(groups)
    cfg = TfidfConfig(**{"min_df": 1, **tfidf})
    return build_baseline(cfg, seed=0).fit(df["text"].tolist(), df["label"].tolist())


def test_binary_learns_and_probabilities_sum_to_one():
    model = fit({"pos": POS, "neg": NEG})
    proba = model.predict_proba(["loved it, great fun", "hated it, boring and awful"])
    assert list(model.classes_) == ["neg", "pos"]
    assert proba.shape == (2, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert list(model.predict(["loved it, great fun", "hated it, boring and awful"])) == ["pos", "neg"]
    assert proba[0, 1] > 0.6 and proba[1, 0] > 0.6


@pytest.mark.parametrize("nb_weighting", [True, False])
def test_three_classes_learn_one_vs_rest(nb_weighting):
    model = fit({"positive": POS, "negative": NEG, "neutral": NEU}, nb_weighting=nb_weighting)
    texts = ["great fun, loved it", "boring, hated it", "the film is on sunday"]
    proba = model.predict_proba(texts)
    assert proba.shape == (3, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert list(model.predict(texts)) == ["positive", "negative", "neutral"]
    assert model.named_steps["clf"].coef_.shape[0] == 3  # per-class ratios and weights


def test_text_without_spaces_is_learned_from_char_ngrams():
    model = fit({"pos": ZH_POS, "neg": ZH_NEG}, word_ngram_max=1)
    unseen = ["她喜欢这个好看的故事", "那个演员很无聊很差"]  # neither sentence occurs in training
    assert list(model.predict(unseen)) == ["pos", "neg"]
    char_counts = model.named_steps["features"].transformer_list[1][1].named_steps["counts"]
    assert "喜欢" in char_counts.grams_ and "无聊" in char_counts.grams_


def test_char_block_alone_carries_unspaced_text():
    """No word features at all: the char n-gram counts alone separate unseen unspaced text."""
    df = frame({"pos": ZH_POS, "neg": ZH_NEG})
    counts = CharWbNgramCounter((1, 3)).fit(df["text"])
    X = counts.transform(df["text"].tolist() + ["她喜欢这个好看的故事", "那个演员很无聊很差"])
    clf = NBLogisticRegression(C=10, random_state=0).fit(X[:12], df["label"])
    assert list(clf.predict(X[12:])) == ["pos", "neg"]


def test_nb_weighting_changes_the_model():
    a = fit({"pos": POS, "neg": NEG}, nb_weighting=True).predict_proba(["great story"])
    b = fit({"pos": POS, "neg": NEG}, nb_weighting=False).predict_proba(["great story"])
    assert not np.allclose(a, b)


@pytest.mark.parametrize("ngram_max,min_df", [(1, 1), (2, 1), (3, 2)])
def test_word_counts_equal_count_vectorizer(ngram_max, min_df):
    docs = POS + NEG + NEU + ["Caps AND caps, again!", ""]
    ours = WordNgramCounter(ngram_max, min_df=min_df)
    ref = CountVectorizer(ngram_range=(1, ngram_max), token_pattern=TOKEN_PATTERN, min_df=min_df)
    assert_same_columns(ours.fit_transform(docs), ref.fit_transform(docs))
    unseen = ["a great new town movie", "Wonderful, wonderful!", ""]
    assert_same_columns(ours.transform(unseen), ref.transform(unseen))


def test_max_features_keeps_the_most_frequent_terms():
    """Same totals as CountVectorizer (which terms win a tie may differ, as sklearn's is arbitrary)."""
    docs = POS + NEG + NEU
    ours = WordNgramCounter(2, max_features=7).fit_transform(docs)
    ref = CountVectorizer(ngram_range=(1, 2), token_pattern=TOKEN_PATTERN,
                          max_features=7).fit_transform(docs)
    assert ours.shape == ref.shape == (len(docs), 7)
    assert sorted(ours.sum(axis=0).A1) == sorted(ref.sum(axis=0).A1)


def test_char_wb_counts_equal_count_vectorizer():
    docs = POS + NEG + ZH_POS + ["a b  c\tdd", "x"]
    ours = CharWbNgramCounter((1, 4), min_df=2)
    ref = CountVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2)
    assert_same_columns(ours.fit_transform(docs), ref.fit_transform(docs))
    unseen = ["brand new words", "喜欢", ""]
    assert_same_columns(ours.transform(unseen), ref.transform(unseen))


def assert_same_columns(ours, ref) -> None:
    """Equal count matrices up to a permutation of columns (ours are not alphabetical)."""
    assert ours.shape == ref.shape
    assert column_set(ours) == column_set(ref)


def column_set(matrix) -> list[tuple]:
    """Each column as (rows, values), sorted: a matrix's identity ignoring column order."""
    csc = matrix.tocsc()
    csc.sort_indices()
    return sorted((tuple(csc[:, j].indices), tuple(csc[:, j].data.astype(float)))
                  for j in range(csc.shape[1]))


def test_train_model_writes_folder_and_round_trips(tmp_path):
    df = frame({"pos": POS, "neg": NEG, "neu": NEU})
    seen: list[tuple] = []
    metrics = train_model(df, df, small_params(), tmp_path / "m",
                          on_metric=lambda *args: seen.append(args))
    assert metrics["accuracy"] == 1.0 and metrics["f1_macro"] == 1.0
    assert metrics["n_train"] == len(df) and metrics["train_seconds"] >= 0
    assert {name for name, _, _ in seen} == {"accuracy", "f1_macro", "train_seconds", "n_train"}
    meta = read_meta(tmp_path / "m")
    assert meta["kind"] == "sklearn" and meta["classes"] == ["neg", "neu", "pos"]
    assert meta["train"]["tfidf"]["min_df"] == 1 and meta["clean"] == {"strip_html": True,
                                                                       "lowercase": False}
    texts = ["great fun", "boring and awful", "a film on sunday", "我喜欢", ""]
    first, second = load_sklearn(tmp_path / "m"), load_classifier(tmp_path / "m")
    assert first.classes_ == ["neg", "neu", "pos"]
    np.testing.assert_array_equal(first.predict_proba(texts), second.predict_proba(texts))
    assert first.predict_proba([]).shape == (0, 3)


def test_train_model_overwrites_a_stale_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stale.bin").write_text("old")
    train_model(frame({"pos": POS, "neg": NEG}), frame({"pos": POS[:1], "neg": NEG[:1]}),
                small_params(), tmp_path / "m")
    assert not (tmp_path / "m" / "stale.bin").exists()


def test_single_class_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit({"pos": POS})


def test_reversed_char_range_is_rejected():
    with pytest.raises(ValueError, match="char_ngram_min"):
        TfidfConfig(char_ngram_min=5, char_ngram_max=3)


@pytest.mark.parametrize("groups", [
    {"pos": ["great fun", "loved it", "great film"], "neg": ["awful bore", "hated it", "awful"]},
    {"a": ["red apple", "red cherry", "apple pie"], "b": ["blue sky", "blue sea", "sky high"],
     "c": ["green grass", "green leaf", "grass field"]},
], ids=["binary", "three classes"])
def test_prepared_fit_equals_fit_on_the_weighted_matrix(groups):
    """optimize's trials fit from the unweighted blocks, shared NB counts and column weights;
    the model must be the one fit() gives on the weighted (stacked) matrix."""
    import scipy.sparse as sp

    from tasks.train.baseline import NBLogisticRegression, nb_stats, stack

    texts = [t for ts in groups.values() for t in ts]
    labels = np.array([k for k, ts in groups.items() for _ in ts])
    rng = np.random.default_rng(0)
    blocks = {"word": sp.random(len(texts), 7, density=0.5, format="csr", dtype=np.float32,
                                random_state=rng),
              "char": sp.random(len(texts), 5, density=0.6, format="csr", dtype=np.float32,
                                random_state=rng)}
    X0 = stack(blocks, 1.0)
    weight = np.array([1.0] * 7 + [0.3] * 5, dtype=np.float32)
    expected = NBLogisticRegression(C=4.0, alpha=0.7).fit(stack(blocks, 0.3), labels)
    got = NBLogisticRegression(C=4.0, alpha=0.7).fit_prepared(X0, weight, nb_stats(X0, labels))
    assert list(got.classes_) == list(expected.classes_)
    np.testing.assert_allclose(got.coef_, expected.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.intercept_, expected.intercept_, rtol=1e-4, atol=1e-6)
    X = stack(blocks, 0.3)
    np.testing.assert_allclose(got.predict_proba(X), expected.predict_proba(X), atol=1e-6)


@pytest.mark.parametrize("groups", [{"pos": POS, "neg": NEG},
                                    {"positive": POS, "negative": NEG, "neutral": NEU}])
def test_blockwise_prediction_equals_the_pipeline(groups):
    """SklearnTextClassifier scores block by block (no stacked matrix): the same probabilities
    as the scikit-learn Pipeline, binary and one-vs-rest, with a char weight that is not 1."""
    from tasks.train.baseline import SklearnTextClassifier, linear_blocks

    pipeline = fit(groups, char_weight=0.3)
    texts = ["great fun, loved it", "boring, hated it", "the film is on sunday", "", "新しい"]
    assert linear_blocks(pipeline) is not None
    np.testing.assert_allclose(SklearnTextClassifier(pipeline).predict_proba(texts),
                               pipeline.predict_proba(texts), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("vectorizer", ["fast", "sklearn"])
def test_block_transform_is_the_blocks_own_transform_bit_for_bit(vectorizer):
    """The tf-idf step done without TfidfTransformer's input checks gives exactly the matrix the
    block's Pipeline gives: one text, several, an empty one and one without spaces."""
    from tasks.train.baseline import block_transform, linear_blocks

    pipeline = fit({"pos": POS, "neg": NEG}, vectorizer=vectorizer)
    blocks, _ = linear_blocks(pipeline)
    for batch in (["great fun, loved it"], POS + NEG, [""], ["新しい", "boring, hated it"]):
        for block, _ in blocks:
            got, expected = block_transform(block, batch), block.transform(batch)
            assert got.format == "csr" and got.dtype == expected.dtype
            assert got.shape == expected.shape and (got != expected).nnz == 0


def _recorded_fits(monkeypatch, attr: str) -> list:
    """The value of the classifier's `attr` at each liblinear fit the baseline makes."""
    import tasks.train.baseline as train_mod

    seen: list = []

    class Recording(train_mod.LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            seen.append(getattr(self, attr))
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(train_mod, "LogisticRegression", Recording)
    return seen


def test_the_dual_solver_is_used_when_features_far_outnumber_rows(monkeypatch):
    """train.tfidf.dual_feature_ratio picks liblinear's formulation from the matrix's shape;
    both reach the same optimum (the same predictions, nearly the same weights)."""
    seen = _recorded_fits(monkeypatch, "dual")
    texts = ["great fun, loved it", "boring, hated it", "loved the story", "hated the story"]
    coefs = {}
    for ratio in (0.0, 1e9):
        model = fit({"pos": POS, "neg": NEG}, dual_feature_ratio=ratio, tol=1e-4)  # to the optimum
        coefs[ratio] = model.named_steps["clf"].coef_
        assert list(model.predict(texts)) == ["pos", "neg", "pos", "neg"]
    assert seen == [True, False]
    np.testing.assert_allclose(coefs[0.0], coefs[1e9], atol=2e-3)


@pytest.mark.parametrize(("tol", "ratio", "expected"), [(None, 0.0, 0.1), (None, 1e9, 0.01),
                                                          (1e-4, 0.0, 1e-4), (0.5, 1e9, 0.5)])
def test_liblinear_gets_its_own_default_tolerance_unless_one_is_set(monkeypatch, tol, ratio,
                                                                    expected):
    """train.tfidf.tol null: liblinear's own stopping tolerance for the solver that fits (dual
    0.1, primal 0.01), not scikit-learn's 1e-4; a set tol is passed as it is."""
    seen = _recorded_fits(monkeypatch, "tol")
    model = fit({"pos": POS, "neg": NEG, "neu": NEU}, dual_feature_ratio=ratio, tol=tol)
    assert seen == [expected] * 3  # one-vs-rest: one fit per class
    assert list(model.predict(["great fun, loved it", "boring, hated it"])) == ["pos", "neg"]


def test_the_per_class_scaled_values_share_the_index_arrays_and_equal_a_scaled_copy(monkeypatch):
    """scale_columns_into writes exactly scale_columns' float64 values (in chunks smaller than
    the matrix here) into a matrix on X's own index arrays."""
    import scipy.sparse as sp

    import tasks.train.baseline as train_mod

    monkeypatch.setattr(train_mod, "SCALE_CHUNK", 7)
    X = sp.random(40, 25, density=0.3, format="csr", dtype=np.float32, random_state=3)
    factor = np.random.default_rng(3).normal(size=25)
    out = sp.csr_matrix((np.empty(X.nnz), X.indices, X.indptr), shape=X.shape)
    got = train_mod.scale_columns_into(out, X, factor)
    expected = train_mod.scale_columns(X, factor, dtype=np.float64)
    assert np.shares_memory(got.indices, X.indices) and got.dtype == np.float64
    assert np.array_equal(got.data, expected.data) and np.array_equal(got.indices, expected.indices)


@pytest.mark.parametrize("weight", [0.5, 0.4092543330087071, 1.0, 0.0])
def test_stack_weights_the_char_columns_in_place_bit_for_bit(monkeypatch, weight):
    """stack() gives exactly hstack([word, char * weight]) (values, indices, dtype), weighting
    in chunks smaller than the matrix here."""
    import scipy.sparse as sp

    import tasks.train.baseline as train_mod

    monkeypatch.setattr(train_mod, "SCALE_CHUNK", 5)
    for dtype in (np.float32, np.float64):
        mats = {"word": sp.random(30, 9, density=0.4, format="csr", dtype=dtype, random_state=1),
                "char": sp.random(30, 14, density=0.4, format="csr", dtype=dtype, random_state=2)}
        got = train_mod.stack(mats, weight)
        expected = sp.hstack([mats["word"], mats["char"] * weight], format="csr")
        assert got.dtype == expected.dtype
        for attr in ("indptr", "indices", "data"):
            assert np.array_equal(getattr(got, attr), getattr(expected, attr)), attr


def test_a_big_corpus_counts_its_blocks_one_after_the_other(monkeypatch):
    """Above SIDE_BY_SIDE_MAX_CHARS train characters the blocks are fitted in one thread (the
    memory peak is one block's counting); the matrices are the same either way."""
    import threading

    import tasks.train.baseline as train_mod

    texts = POS + NEG + NEU
    threads: dict[int, set[str]] = {}
    original = train_mod.fit_block
    both_running = threading.Barrier(2, timeout=60)  # side by side: each block waits for the other

    def recording(block, train_texts, val_texts):
        threads.setdefault(limit, set()).add(threading.current_thread().name)
        if limit == 10**9:  # a pool that reused one thread would break the barrier
            both_running.wait()
        return original(block, train_texts, val_texts)

    monkeypatch.setattr(train_mod, "fit_block", recording)
    fitted = {}
    for limit in (10**9, 10):
        monkeypatch.setattr(train_mod, "SIDE_BY_SIDE_MAX_CHARS", limit)
        fitted[limit] = train_mod.fit_features(TfidfConfig(min_df=1), texts, NEU)
    assert len(threads[10**9]) == 2 and len(threads[10]) == 1
    for split in ("train", "val"):
        for kind in train_mod.BLOCKS:
            a, b = getattr(fitted[10**9], split)[kind], getattr(fitted[10], split)[kind]
            assert a.shape == b.shape and (a != b).nnz == 0


def test_a_model_pickled_with_the_old_module_paths_still_loads(tmp_path):
    """A baseline saved when its classes lived in tasks.train and tasks.ngrams (the fixture,
    fitted by that code on these texts) loads through the legacy loader and predicts."""
    import shutil
    from pathlib import Path

    from tasks.train.baseline import NBLogisticRegression, load_sklearn
    from tasks.train.ngrams import WordNgramCounter
    from textloop.core.model import LEGACY_FILE

    old = Path(__file__).parents[1] / "support" / "old_module_paths_model.joblib"
    assert b"tasks.train" in old.read_bytes() and b"tasks.ngrams" in old.read_bytes()
    (tmp_path / "model").mkdir()
    shutil.copy(old, tmp_path / "model" / LEGACY_FILE)
    model = load_sklearn(tmp_path / "model")
    assert isinstance(model.pipeline.named_steps["clf"], NBLogisticRegression)
    word = model.pipeline.named_steps["features"].transformer_list[0][1]
    assert isinstance(word.named_steps["counts"], WordNgramCounter)
    texts = ["great fun, loved it", "boring, hated it", "loved the story", "hated the story"]
    assert list(model.pipeline.predict(texts)) == ["pos", "neg", "pos", "neg"]


@pytest.mark.parametrize(("features", "rows", "C", "dual"), [
    (212_537, 28_457, 4.0, True), (212_537, 28_457, 16.0, True), (212_537, 28_457, 64.0, False),
    (1_050_000, 22_500, 16.0, True), (1_050_000, 22_500, 64.0, True)])
def test_the_solver_follows_the_measured_crossover_of_dual_and_primal(features, rows, C, dual):
    """Tweets (7.5x as many features as rows) and IMDb (47x) at the default ratio: the dual
    where it fitted faster, the primal where the dual's iterations grew with C."""
    from tasks.train.baseline import uses_dual

    assert uses_dual(features, rows, C, TfidfConfig().dual_feature_ratio) is dual


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_fit_that_spends_its_float64_values_is_the_fit_on_a_copy_bit_for_bit(monkeypatch,
                                                                                n_classes):
    """train's fit is its matrix's last use: overwrite=True lets a binary fit scale the float64
    values in place (traced memory stays under one float64 copy of them; liblinear's own copy
    is C memory, not traced), and gives the model fit() gives on the float32 matrix, bit for
    bit. A multi-class fit still scales into a copy (each class scales the original values)."""
    import tracemalloc

    import scipy.sparse as sp

    import tasks.train.baseline as train_mod

    monkeypatch.setattr(train_mod, "SCALE_CHUNK", 4096)  # the scaling's bounded temporary
    rng = np.random.default_rng(5)
    X = sp.random(3000, 20000, density=0.02, format="csr", dtype=np.float32, random_state=rng)
    y = np.array(["abc"[i % n_classes] for i in range(3000)])
    expected = NBLogisticRegression(C=4.0, random_state=0).fit(X, y)
    X64 = train_mod.with_float64_values(X)
    assert np.shares_memory(X64.indices, X.indices) and X64.dtype == np.float64
    tracemalloc.start()
    got = train_mod.fit_nb_lr(NBLogisticRegression(C=4.0, random_state=0), X64, y,
                              overwrite=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(got.coef_, expected.coef_)
    assert np.array_equal(got.intercept_, expected.intercept_)
    copy = X64.data.nbytes
    assert (peak < copy) if n_classes == 2 else (peak >= copy)


def test_a_fit_leaves_every_value_of_a_matrix_sharing_its_indices_on_its_own_column():
    """liblinear sorts its matrix's column indices in place; the float64 matrix a fit spends
    shares them with the caller's. The caller's matrix [[1, 0, 5], [0, 2, 0], [0, 0, 3]], its
    first row stored as columns [2, 0], must read the same after the fit."""
    import scipy.sparse as sp

    from tasks.train.baseline import fit_nb_lr, with_float64_values

    X = sp.csr_matrix((np.array([5.0, 1.0, 2.0, 3.0], dtype=np.float32), np.array([2, 0, 1, 2]),
                       np.array([0, 2, 3, 4])), shape=(3, 3))
    before = X.toarray()
    fit_nb_lr(NBLogisticRegression(), with_float64_values(X), ["0", "1", "1"], overwrite=True)
    assert np.array_equal(X.toarray(), before)


def test_every_class_and_every_trial_fits_the_matrix_it_was_given():
    """The per-class scaled values share the matrix's indices, which liblinear's fit sorts in
    place: on a matrix stored with unsorted columns (as the char counter's product gives), each
    class after the first and each later fit on the same prepared matrix must still fit it,
    the model fitted on the same matrix stored sorted, bit for bit."""
    import scipy.sparse as sp

    from tasks.train.baseline import nb_stats

    rng = np.random.default_rng(7)
    dense = rng.random((300, 40)) * (rng.random((300, 40)) < 0.3)
    y = np.array(["abc"[i % 3] for i in range(300)])
    reversed_rows = sp.csr_matrix(dense, dtype=np.float32)
    for row in range(reversed_rows.shape[0]):  # each row's columns stored in reverse order
        span = slice(reversed_rows.indptr[row], reversed_rows.indptr[row + 1])
        reversed_rows.indices[span] = reversed_rows.indices[span][::-1].copy()
        reversed_rows.data[span] = reversed_rows.data[span][::-1].copy()
    reversed_rows.has_sorted_indices = False
    assert np.array_equal(reversed_rows.toarray(), dense.astype(np.float32))
    expected = NBLogisticRegression(random_state=0).fit(sp.csr_matrix(dense, dtype=np.float32), y)
    weight, stats = np.ones(40, dtype=np.float32), nb_stats(reversed_rows, y)
    for _ in range(2):  # the second fit is a later trial on the same prepared matrix
        got = NBLogisticRegression(random_state=0).fit_prepared(reversed_rows, weight, stats)
        assert np.array_equal(got.coef_, expected.coef_)
        assert np.array_equal(got.intercept_, expected.intercept_)
