"""Explanations: the baseline's n-gram contributions add up to its logit exactly
(binary and 3-class, both blocks, NB scaling and char_weight included), spans point at the
characters of the text as sent (HTML, entities, extra spaces, invisible characters), the offset
replay agrees with normalize_text, and the global view is written with the model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.train.explain_linear import global_view, gram_names, word_vocabulary
from tasks.train.fit import train_model
from tests.support.fixtures import synthetic, train_tiny
from textloop.core.config import Params
from textloop.core.model import GLOBAL_FILE
from textloop.core.text import normalize_text
from textloop.core.textspans import normalize_with_offsets
from textloop.pipeline.models import NormalizingClassifier


def three_class(n: int, seed: int) -> pd.DataFrame:
    """pos / neg / neutral texts: the sentiment word decides."""
    rng = np.random.default_rng(seed)
    words = {"pos": ["great", "superb", "fun"], "neg": ["awful", "dull", "boring"],
             "neu": ["average", "okay", "fine"]}
    rows = []
    for i in range(n):
        label = ["pos", "neg", "neu"][i % 3]
        filler = list(rng.choice(["the", "movie", "plot", "was", "really", "and"], size=6))
        filler.insert(int(rng.integers(0, 6)), str(rng.choice(words[label])))
        rows.append((" ".join(filler), label))
    return pd.DataFrame(rows, columns=["text", "label"])


def _baseline(tmp_path, frame: pd.DataFrame, **tfidf) -> NormalizingClassifier:
    params = Params.model_validate({"train": {"tfidf": {"min_df": 1, **tfidf}},
                                    "clean": {"lowercase": False}})
    train_model(frame.iloc[: int(len(frame) * 0.8)], frame.iloc[int(len(frame) * 0.8):], params,
                tmp_path / "model")
    return NormalizingClassifier(tmp_path / "model")


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> NormalizingClassifier:
    return _baseline(tmp_path_factory.mktemp("bin"), synthetic(300, seed=3), char_weight=0.7)


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> NormalizingClassifier:
    return _baseline(tmp_path_factory.mktemp("multi"), three_class(240, seed=4), char_weight=0.4)


def _logits(model: NormalizingClassifier, text: str) -> np.ndarray:
    """The model's own decision_function per class (binary: [-z, z])."""
    pipe = model.inner.pipeline
    df = np.asarray(pipe.decision_function([normalize_text(text)]), dtype=np.float64)
    return np.array([-df[0], df[0]]) if df.ndim == 1 else df[0]


def _exact_logits(model: NormalizingClassifier, text: str) -> np.ndarray:
    """The same in float64 throughout (the model multiplies float32 matrices)."""
    pipe = model.inner.pipeline
    X = pipe.steps[0][1].transform([normalize_text(text)]).astype(np.float64)
    clf = pipe.steps[-1][1]
    z = np.asarray(X @ clf.coef_.astype(np.float64).T).ravel() + clf.intercept_
    return np.array([-z[0], z[0]]) if len(clf.classes_) == 2 else z


TEXTS = ["a great and wonderful film, really fun", "the plot was boring and awful!!",
         "  <b>Terrible</b>&amp; DULL   acting\u200b… but a lovely ending  "]


@pytest.mark.parametrize("text", TEXTS)
def test_contributions_sum_to_the_binary_logit(binary, text):
    for target in binary.classes_:
        out = binary.explain(text, target=target)
        k = binary.classes_.index(target)
        total = out["base"] + sum(f["weight"] for f in out["features"])
        assert total == pytest.approx(_exact_logits(binary, text)[k], abs=1e-9)
        # the model's own float32 product agrees to its rounding (1e-6 relative)
        assert total == pytest.approx(_logits(binary, text)[k], rel=1e-6, abs=1e-6)
        assert out["score"] == pytest.approx(_logits(binary, text)[k], abs=1e-12)
        assert {f["block"] for f in out["features"]} == {"word", "char"}
        assert out["unlocated_weight"] == 0.0


@pytest.mark.parametrize("text", ["the movie was superb and fun", "awful dull plot",
                                  "it was okay and fine, average"])
def test_contributions_sum_to_each_multiclass_logit(multi, text):
    logits = _exact_logits(multi, text)
    for k, target in enumerate(multi.classes_):
        out = multi.explain(text, target=target)
        assert out["base"] + sum(f["weight"] for f in out["features"]) == pytest.approx(
            logits[k], abs=1e-9)
    predicted = multi.explain(text)
    assert predicted["target"] == predicted["label"] == multi.classes_[int(np.argmax(
        multi.predict_proba([text])[0]))]


def test_char_weight_and_nb_ratio_are_in_the_contributions(binary):
    """A char feature's weight is coef x char_weight x tf-idf value: halving char_weight in the
    union halves every char contribution."""
    out = binary.explain("a great and wonderful film")
    union = binary.inner.pipeline.steps[0][1]
    assert union.transformer_weights["char"] == 0.7
    char = [f for f in out["features"] if f["block"] == "char"]
    clf = binary.inner.pipeline.steps[-1][1]
    k = 1 if out["target"] == binary.classes_[1] else -1
    for f in char[:5]:
        assert f["value"] > 0
    union.transformer_weights = {"word": 1.0, "char": 0.35}
    binary.inner._explainer = None
    try:
        halved = {f["feature"]: f["weight"] for f in binary.explain("a great and wonderful film",
                                                                    target=out["target"])
                  ["features"] if f["block"] == "char"}
    finally:
        union.transformer_weights = {"word": 1.0, "char": 0.7}
        binary.inner._explainer = None
    for f in char:
        assert halved[f["feature"]] == pytest.approx(f["weight"] / 2, rel=1e-6)
    assert clf.coef_.shape[0] == 1 and k in (1, -1)


def test_spans_point_into_the_text_as_sent(binary):
    """HTML tags, an entity, runs of spaces, a zero-width space and upper case in the input:
    every span's text is the original substring, and n-grams land on their words."""
    text = "  <p>The   MOVIE was <b>GREAT</b>&nbsp;fun\u200b!</p>  "
    out = binary.explain(text)
    by_text = {s["text"]: s for s in out["spans"]}
    assert {"The", "MOVIE", "was", "GREAT", "fun", "!"} <= set(by_text)
    for s in out["spans"]:
        assert text[s["start"]:s["end"]] == s["text"]
    great = next(f for f in out["features"] if f["block"] == "word" and f["feature"] == "great")
    assert great["text"] == ["GREAT"] and text[slice(*great["spans"][0])] == "GREAT"
    bigram = next(f for f in out["features"] if f["feature"] == "movie was")
    assert bigram["text"] == ["MOVIE was"]
    # piece weights add up to all located contributions
    assert sum(s["weight"] for s in out["spans"]) == pytest.approx(
        sum(f["weight"] for f in out["features"]), abs=1e-9)


def test_repeated_ngram_has_one_span_per_occurrence(binary):
    text = "fun, FUN and   fun"
    out = binary.explain(text)
    fun = next(f for f in out["features"] if f["block"] == "word" and f["feature"] == "fun")
    assert fun["text"] == ["fun", "FUN", "fun"]
    assert fun["spans"] == [[0, 3], [5, 8], [15, 18]]


def test_top_features_for_and_against(binary):
    out = binary.explain("great fun but boring", target="pos", top_k=3)
    assert out["target"] == "pos" and len(out["top_for"]) <= 3
    assert all(f["weight"] > 0 for f in out["top_for"])
    assert all(f["weight"] < 0 for f in out["top_against"])
    words_for = {f["feature"] for f in out["top_for"] if f["block"] == "word"}
    words_against = {f["feature"] for f in out["top_against"] if f["block"] == "word"}
    assert "great" in words_for or "fun" in words_for
    assert "boring" in words_against


def test_plain_tfidf_logistic_pipeline(tmp_path):
    """The tests' tiny champion (TfidfVectorizer + LogisticRegression) explains exactly too."""
    model = NormalizingClassifier(train_tiny(synthetic(200, seed=1), tmp_path / "tiny"))
    text = "A  <i>lovely</i> film, but the acting was poor"
    out = model.explain(text)
    pipe = model.inner.pipeline
    k = model.classes_.index(out["target"])
    z = float(pipe.decision_function([normalize_text(text)])[0]) * (1 if k == 1 else -1)
    assert out["base"] + sum(f["weight"] for f in out["features"]) == pytest.approx(z, abs=1e-9)
    assert {f["text"][0] for f in out["features"]} >= {"lovely", "poor"}


def test_word_vocabulary_decodes_the_fast_counter(binary):
    counter = binary.inner.pipeline.steps[0][1].transformer_list[0][1].steps[0][1]
    vocab = word_vocabulary(counter)
    text = synthetic(300, seed=3)["text"][0]  # a training text: its trigrams are in the vocabulary
    X = counter.transform([text])
    names = {gram for gram, col in vocab.items() if X[0, col] > 0}
    words = text.split()
    grams = {" ".join(words[i:i + n]) for n in (1, 2, 3) for i in range(len(words) - n + 1)}
    assert names == grams
    assert any(g.count(" ") == 2 for g in names)  # a trigram decoded through two levels
    cols = [vocab[g] for g in sorted(names)]
    assert gram_names(counter, cols) == sorted(names)


def test_global_view_written_with_the_model(binary, multi):
    saved = json.loads((binary.folder / GLOBAL_FILE).read_text())
    assert saved == binary.global_view()
    view = saved["classes"]
    assert set(view) == {"neg", "pos"} and saved["top_k"] == 20
    pos_words = {g for g, _ in view["pos"]["for"]}
    assert {"word:great", "word:fun"} & pos_words
    assert all(w > 0 for _, w in view["pos"]["for"]) and all(w < 0 for _, w in view["pos"]["against"])
    # binary: one class's "for" is the other's "against"
    assert [g for g, _ in view["neg"]["for"]] == [g for g, _ in view["pos"]["against"]]
    three = global_view(multi.inner.pipeline, 3)["classes"]
    assert set(three) == {"pos", "neg", "neu"}
    assert {"word:okay", "word:fine", "word:average"} & {g for g, _ in three["neu"]["for"]}


def test_explain_via_loaded_folder_matches(binary):
    model = NormalizingClassifier(binary.folder)  # a fresh load: the pickled pipeline + folder
    assert model.explain("great fun")["score"] == pytest.approx(binary.explain("great fun")["score"])


# --- offsets through the normalisation ---------------------------------------------------------

@pytest.mark.parametrize("text,strip_html,lowercase", [
    ("  <b>Hello</b>&amp;   World  ", True, False),
    ("e\u0301cole &lt;tag&gt; x\u200by", True, True),
    ("İstanbul ΣΑΣ", False, True),
    ("&amptest &#65;&#x42; <br/>line", True, False),
    ("", True, False),
])
def test_offsets_replay_normalize_text(text, strip_html, lowercase):
    out, spans = normalize_with_offsets(text, strip_html, lowercase)
    assert out == normalize_text(text, strip_html, lowercase)
    assert len(spans) == len(out)
    for (a, b) in spans:
        assert 0 <= a < b <= len(text)
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)


def test_offsets_map_characters_back():
    text = "  <b>Hi</b>&amp;  YOU\u200b!"
    out, spans = normalize_with_offsets(text, lowercase=True)
    assert out == "hi & you!"
    pieces = [text[a:b] for a, b in spans]
    assert pieces == ["H", "i", "</b>", "&amp;", "  ", "Y", "O", "U", "!"]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZ <>/&;#x1b é\u0301\u200b\t\nİΣ")), max_size=40),
       st.booleans(), st.booleans())
def test_offsets_agree_with_normalize_text_on_any_input(text, strip_html, lowercase):
    out, spans = normalize_with_offsets(text, strip_html, lowercase)
    assert out == normalize_text(text, strip_html, lowercase)
    assert len(spans) == len(out)
    assert all(0 <= a < b <= len(text) for a, b in spans)


def test_sklearn_vectorizer_baseline_sums_too(tmp_path):
    """train.tfidf.vectorizer: sklearn (CountVectorizer blocks, alphabetical columns)."""
    model = _baseline(tmp_path, three_class(150, seed=5), vectorizer="sklearn")
    text = "The plot was <i>superb</i>,   really FUN"
    logits = _exact_logits(model, text)
    for k, target in enumerate(model.classes_):
        out = model.explain(text, target=target)
        assert out["base"] + sum(f["weight"] for f in out["features"]) == pytest.approx(
            logits[k], abs=1e-9)
        assert out["unlocated_weight"] == 0.0
    assert {"superb", "FUN"} <= {s["text"] for s in out["spans"]}
