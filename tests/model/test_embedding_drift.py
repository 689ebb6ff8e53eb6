"""Embedding drift: another domain raises the alert, a same-domain replay of 10x the window does
not, tiny windows get no verdict. Fast tests use a stub encoder (hashed bag of words); the
MiniLM one is marked slow."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tasks.monitor.embedding_drift import alert, embedding_drift, sample
from tests.support.fixtures import synthetic
from textloop.core.config import MonitorConfig

OTHER_DOMAIN = ["stock", "market", "shares", "earnings", "quarter", "profit", "investors", "bank",
                "interest", "rates", "inflation", "bond", "yield", "dividend", "revenue", "fund"]


def other_domain(n: int, seed: int) -> list[str]:
    """Finance headlines: the vocabulary of another domain than the movie reviews."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(OTHER_DOMAIN, size=int(rng.integers(6, 14)))) for _ in range(n)]


def stub_encoder(texts):
    """Hashed bag of words, L2-normalised: cheap, deterministic, domain-sensitive."""
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            out[row, zlib.crc32(word.encode()) % 256] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def cfg(**kw) -> MonitorConfig:
    return MonitorConfig.model_validate({"min_window": 100, "embedding": {"max_rows": 1000,
                                                                          "top_k": 5}, **kw})


def test_other_domain_raises_the_alert_and_names_the_most_drifted_texts():
    ref = synthetic(200, seed=0)["text"].tolist()
    cur = synthetic(100, seed=1)["text"].tolist() + other_domain(100, seed=2)
    out = embedding_drift(ref, cur, cfg(), stub_encoder)
    assert out["status"] == "drift" and out["auc"] > 0.65
    assert len(out["top"]) == 5 and all(t["text"].split()[0] in OTHER_DOMAIN for t in out["top"])
    assert alert(out).startswith(f"embedding drift: domain classifier AUC {out['auc']:.3f} > 0.65")


def test_same_domain_replay_of_ten_times_the_window_does_not():
    ref = synthetic(200, seed=0)["text"].tolist()
    cur = synthetic(2000, seed=3)["text"].tolist()
    out = embedding_drift(ref, cur, cfg(), stub_encoder)
    assert out["status"] == "ok" and out["auc"] < 0.6 and alert(out) is None
    assert (out["n_reference"], out["n_current"]) == (200, 1000)  # current sampled to max_rows


def test_windows_below_min_window_get_no_verdict():
    calls = []
    out = embedding_drift(synthetic(200, 0)["text"].tolist(), other_domain(99, 1), cfg(),
                          lambda t: calls.append(t) or stub_encoder(t))
    assert (out["status"], out["auc"], calls) == ("too_few", None, [])


def test_sample_is_deterministic_and_bounded():
    texts = [str(i) for i in range(50)]
    assert sample(texts, 10) == sample(texts, 10) and len(sample(texts, 10)) == 10
    assert sample(texts, 100) == texts


@pytest.mark.slow
def test_minilm_embeddings_separate_domains_and_not_replays():
    from tasks.monitor.embedding_drift import MiniLMEncoder

    enc = MiniLMEncoder(batch_size=64)
    ref = synthetic(120, seed=0)["text"].tolist()
    shifted = embedding_drift(ref, other_domain(120, 2), cfg(min_window=100), enc)
    same = embedding_drift(ref, synthetic(1200, seed=3)["text"].tolist(),
                           cfg(min_window=100, embedding={"max_rows": 300}), enc)
    assert shifted["status"] == "drift" and shifted["auc"] > 0.9
    assert same["status"] == "ok" and same["auc"] < 0.65
