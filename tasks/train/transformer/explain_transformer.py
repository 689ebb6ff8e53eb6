"""Token attributions of the torch classifier with captum: integrated gradients on the token
embeddings (baseline: every text token replaced by [PAD], [CLS]/[SEP] kept) or occlusion (each
token replaced by [PAD] alone), for the logit of one class, mapped to character spans through the
tokenizer's offsets.

Integrated gradients satisfy completeness up to the path-integral approximation: sum of the
attributions = logit(text) - logit(baseline) + error; the error (captum's convergence delta) is
reported with the number of steps that produced it. Occlusion is not additive: its
"completeness_error" is how far the sum of single-token effects is from the whole effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import FeatureAblation, LayerIntegratedGradients

from tasks.train.explain_linear import finish
from tasks.train.transformer.torch_model import (
    Predictor,
    SequenceClassifier,
    load_fp32,
)

METHODS = ("integrated_gradients", "occlusion")
OCCLUSION_BATCH = 64  # ablated copies of the text per forward pass


def fp32_model(folder: Path) -> SequenceClassifier:
    """The fp32 weights of a saved folder on CPU (an int8-served model has no gradients: its
    explanation uses the fp32 weights the int8 layers were quantized from)."""
    return load_fp32(folder)[0].eval()


def kept_tokens(predictor: Predictor, text: str) -> tuple[list[int], list[tuple[int, int]], list[str]]:
    """Ids, character offsets and strings of the text tokens the model sees (the same head or
    head+tail cut as textloop's encode(), without [CLS]/[SEP])."""
    enc = predictor.tok.encode(text, add_special_tokens=False)
    budget = predictor.spec.max_seq_len - 2
    keep = list(range(len(enc.ids)))
    if len(keep) > budget:
        head = budget if predictor.spec.truncation == "head" else budget // 4
        keep = keep[:head] + keep[len(keep) - (budget - head):]
    return ([enc.ids[i] for i in keep], [tuple(enc.offsets[i]) for i in keep],
            [enc.tokens[i] for i in keep])


def attribute(model: SequenceClassifier, ids: torch.Tensor, baseline: torch.Tensor,
              target: int, method: str, steps: int) -> tuple[np.ndarray, float]:
    """Per-position attributions to the target logit and the completeness error."""
    mask = torch.ones_like(ids)

    def forward(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return model(x, m.expand(x.shape[0], -1))

    if method == "integrated_gradients":
        lig = LayerIntegratedGradients(forward, model.encoder.embeddings.word_embeddings)
        attr, delta = lig.attribute(ids, baselines=baseline, target=target, n_steps=steps,
                                    additional_forward_args=(mask,), internal_batch_size=steps,
                                    return_convergence_delta=True)
        return attr.sum(-1)[0].detach().double().cpu().numpy(), abs(float(delta.sum()))
    if method == "occlusion":
        attr = FeatureAblation(forward).attribute(  # every token's ablation in one batch
            ids, baselines=baseline, target=target, additional_forward_args=(mask,),
            perturbations_per_eval=min(ids.shape[1], OCCLUSION_BATCH))
        attr = attr[0].detach().double().cpu().numpy()
        with torch.no_grad():
            whole = float(forward(ids, mask)[0, target] - forward(baseline, mask)[0, target])
        return attr, abs(float(attr.sum()) - whole)
    raise ValueError(f"unknown explain method {method!r} (known: {', '.join(METHODS)})")


def explain_torch(predictor: Predictor, model: SequenceClassifier, classes: list[str], text: str,
                  method: str = "integrated_gradients", steps: int = 32, top_k: int = 10,
                  target: str | None = None) -> dict[str, Any]:
    """Token attributions for one text (see textloop.core.model.Explainable for the shape);
    `model` is the fp32 module to differentiate (predictor.model unless it is int8).
    Raises ValueError for an unknown method or target class."""
    tok_ids, offsets, tokens = kept_tokens(predictor, text)
    cls_id, sep_id = predictor.tok.token_to_id("[CLS]"), predictor.tok.token_to_id("[SEP]")
    device = next(model.parameters()).device
    ids = torch.tensor([[cls_id, *tok_ids, sep_id]], dtype=torch.long, device=device)
    baseline = ids.clone()
    baseline[0, 1:-1] = predictor.pad_id
    with torch.no_grad():
        mask = torch.ones_like(ids)
        logits = model(ids, mask)[0].double()
        base_logits = model(baseline, mask)[0].double()
    proba = torch.softmax(logits, -1).cpu().numpy()
    k = int(proba.argmax()) if target is None else classes.index(target)
    attr, error = attribute(model, ids, baseline, k, method, steps)
    spans, features, unlocated = [], [], 0.0
    for (a, b), token, w in zip(offsets, tokens, attr[1:-1].tolist()):
        if spans and a < spans[-1]["end"]:  # tokens of one character ("▁" + [UNK]): one span
            last = spans[-1]
            last["end"], last["weight"] = max(last["end"], b), last["weight"] + w
            last["text"] = text[last["start"]:last["end"]]
        elif b > a:
            spans.append({"start": a, "end": b, "text": text[a:b], "weight": w})
        else:
            unlocated += w
        features.append({"feature": token, "block": "token", "weight": w, "spans": [[a, b]],
                         "text": [text[a:b]]})
    result = {"kind": "torch", "method": method, "steps": steps if method != "occlusion" else None,
              "classes": classes, "proba": proba.tolist(), "label": classes[int(proba.argmax())],
              "target": classes[k], "score": float(logits[k]), "base": float(base_logits[k]),
              "completeness_error": error,
              "special_tokens_weight": float(attr[0] + attr[-1]), "unlocated_weight": unlocated,
              "spans": spans}
    return finish(result, [f for f in features if f["weight"] != 0.0], top_k)
