"""Token attributions of the torch classifier on a tiny scratch transformer: captum's
integrated gradients add up to logit(text) - logit(baseline) within the reported completeness
error, occlusion works too, spans point into the text as sent, int8 folders explain through
their fp32 weights."""

from __future__ import annotations

import pytest
import torch

from tasks.train.transformer.torch_model import (
    SequenceClassifier,
    TextSpec,
    save_folder,
    scratch_encoder,
    train_bpe,
)
from textloop.core.model import write_meta
from textloop.pipeline.models import NormalizingClassifier

TEXTS = ["the movie was great fun", "a boring awful plot", "great acting and a fine story",
         "dull dull dull", "what a lovely film"] * 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained 1-layer, 16-wide BERT with a 120-token BPE: seconds to build, enough to
    check the arithmetic of the attributions."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tok = train_bpe(TEXTS, 120)
    torch.manual_seed(0)
    encoder = scratch_encoder(tok.get_vocab_size(), tok.token_to_id("[PAD]"), 16, 1, 2, 32, 0.0)
    save_folder(SequenceClassifier(encoder, 3, 0.0), tok, TextSpec(32), folder)
    write_meta(folder, "torch", ["a", "b", "c"], {"clean": {"strip_html": True, "lowercase": False}})
    return folder


TEXT = "  <p>The   MOVIE was great&nbsp;fun!</p>"


def test_integrated_gradients_complete_and_spans_in_the_raw_text(tiny):
    model = NormalizingClassifier(tiny)
    out = model.explain(TEXT, method="integrated_gradients", steps=32)
    assert out["kind"] == "torch" and out["method"] == "integrated_gradients" and out["steps"] == 32
    whole = out["score"] - out["base"]
    total = (sum(s["weight"] for s in out["spans"]) + out["special_tokens_weight"]
             + out["unlocated_weight"])
    assert total == pytest.approx(whole, abs=out["completeness_error"] + 1e-9)
    assert out["completeness_error"] < 1e-3 * max(abs(whole), 1e-3)
    # BPE tokens of the normalised text, located in the raw one; "!" is "▁" + [UNK]: one span
    assert [s["text"] for s in out["spans"]] == ["The", "MOVIE", "was", "great", "fun", "!"]
    for s in out["spans"]:
        assert TEXT[s["start"]:s["end"]] == s["text"] and s["text"].strip() == s["text"]
    assert out["label"] == out["classes"][max(range(3), key=lambda i: out["proba"][i])]


def test_fewer_steps_larger_completeness_error_reported(tiny):
    model = NormalizingClassifier(tiny)
    coarse = model.explain(TEXT, steps=2)
    fine = model.explain(TEXT, steps=48)
    assert coarse["steps"] == 2 and fine["steps"] == 48
    assert fine["completeness_error"] <= coarse["completeness_error"] + 1e-9


def test_occlusion_and_target(tiny):
    model = NormalizingClassifier(tiny)
    out = model.explain(TEXT, method="occlusion", target="c")
    assert out["method"] == "occlusion" and out["target"] == "c" and out["steps"] is None
    assert len(out["spans"]) >= 4 and out["completeness_error"] >= 0
    # each token's weight is logit(text) - logit(text with that token as [PAD]), batched or not
    from tasks.train.transformer.explain_transformer import kept_tokens

    pred = model.inner.predictor
    tok_ids, _, _ = kept_tokens(pred, out["normalized"])
    ids = torch.tensor([[pred.tok.token_to_id("[CLS]"), *tok_ids, pred.tok.token_to_id("[SEP]")]])
    ablated = ids.clone()
    ablated[0, 2] = pred.pad_id  # the second text token ("MOVIE")
    with torch.no_grad():
        drop = (pred.model(ids, torch.ones_like(ids))[0, 2]
                - pred.model(ablated, torch.ones_like(ids))[0, 2])
    assert out["spans"][1]["text"] == "MOVIE"
    assert out["spans"][1]["weight"] == pytest.approx(float(drop), abs=1e-5)
    with pytest.raises(ValueError, match="unknown explain method"):
        model.explain(TEXT, method="shap")


def test_int8_folder_explains_with_fp32_weights(tiny, tmp_path):
    import shutil

    from tasks.train.transformer.torch_model import set_quantize_flag

    int8 = tmp_path / "int8"
    shutil.copytree(tiny, int8)
    set_quantize_flag(int8, "dynamic_int8")
    fp32 = NormalizingClassifier(tiny).explain(TEXT)
    out = NormalizingClassifier(int8).explain(TEXT)
    assert [s["weight"] for s in out["spans"]] == pytest.approx([s["weight"] for s in fp32["spans"]])
