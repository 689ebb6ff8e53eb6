"""Model, tokenizer, batching and inference of the torch text classifier.

Imports only torch, transformers, tokenizers, safetensors and numpy, so a bare GPU box can run it
(benchmarks/gpu_finetune.py) without textloop, pandas, Prefect, MLflow or DVC installed.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import nn
from transformers import BertConfig, BertModel

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WEIGHTS_FILE = "model.safetensors"
ENCODER_CONFIG_FILE = "encoder_config.json"
TOKENIZER_FILE = "tokenizer.json"
CLASSIFIER_FILE = "classifier.json"


@dataclass(frozen=True)
class TextSpec:
    """How a text becomes ids: the same at train time and at serving time."""

    max_seq_len: int
    truncation: str = "head_tail"  # head | head_tail (keep the start and the end of long texts)


class SequenceClassifier(nn.Module):
    """A BERT-style encoder, mean pooling over real tokens, dropout and a linear head."""

    def __init__(self, encoder: BertModel, n_classes: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


# --- encoders and tokenizers -------------------------------------------------------------------

def load_pretrained_encoder(folder: Path, dropout: float) -> BertModel:
    """Build a BertModel from a local folder (config.json + model.safetensors), never the network."""
    config = BertConfig.from_json_file(str(folder / "config.json"))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    encoder = BertModel(config, add_pooling_layer=False)
    own = encoder.state_dict()
    state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS_FILE)).items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{folder}: pretrained weights lack {missing[:5]}")
    encoder.load_state_dict(state)
    return encoder


def scratch_encoder(vocab_size: int, pad_id: int, hidden: int, layers: int, heads: int,
                    max_seq_len: int, dropout: float) -> BertModel:
    """A small randomly initialised BERT encoder (seed torch before calling for reproducibility)."""
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} must be a multiple of num_heads {heads}")
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=-(-max_seq_len // 8) * 8,  # collate pads to x8
                        pad_token_id=pad_id,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(config, add_pooling_layer=False)


def load_tokenizer(path: Path) -> Tokenizer:
    """A fast tokenizer from tokenizer.json with its built-in padding/truncation switched off."""
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


def train_bpe(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train an uncased BPE tokenizer on the training texts only (no test leakage).

    BPE with a word-start marker (Metaspace) rather than WordPiece: the WordPiece trainer's
    vocabulary depends on hash-map order (huggingface/tokenizers#1794), which would break
    "same seed, same model" across processes and therefore exact resume.
    """
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(),
                                                 pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def encode(tok: Tokenizer, texts: Sequence[str], spec: TextSpec) -> list[np.ndarray]:
    """Token ids per text, [CLS] ... [SEP], cut to spec.max_seq_len (head or head+tail)."""
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    budget = spec.max_seq_len - 2
    head = budget if spec.truncation == "head" else budget // 4
    out = []
    for enc in tok.encode_batch(list(texts), add_special_tokens=False):
        ids = enc.ids
        if len(ids) > budget:
            ids = ids[:head] + ids[len(ids) - (budget - head):]
        out.append(np.asarray([cls_id, *ids, sep_id], dtype=np.int64))
    return out


# --- batching ----------------------------------------------------------------------------------

def collate(ids: Sequence[np.ndarray], idx: np.ndarray, pad_id: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad one batch to its own longest text (rounded up to 8) and build the attention mask."""
    width = max(len(ids[i]) for i in idx)
    width = -(-width // 8) * 8
    batch = np.full((len(idx), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(idx), width), dtype=np.int64)
    for row, i in enumerate(idx):
        batch[row, :len(ids[i])] = ids[i]
        mask[row, :len(ids[i])] = 1
    return torch.from_numpy(batch).to(device), torch.from_numpy(mask).to(device)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, a no-op on CPU: one code path for both."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# --- inference and metrics ---------------------------------------------------------------------

def predict_proba_ids(model: nn.Module, ids: Sequence[np.ndarray], pad_id: int, batch_size: int,
                      device: torch.device, progress: bool = False) -> np.ndarray:
    """Class probabilities in input order, batched by length; a progress bar on a terminal."""
    from tqdm.auto import tqdm

    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), model.head.out_features), dtype=np.float64)
    model.eval()
    with torch.inference_mode(), tqdm(total=len(ids), unit="doc", disable=None if progress
                                      else True, desc="predict") as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch, mask = collate(ids, idx, pad_id, device)
            with autocast(device):
                logits = model(batch, mask)
            out[idx] = torch.softmax(logits.float(), dim=-1).double().cpu().numpy()
            bar.update(len(idx))
    return out / out.sum(axis=1, keepdims=True)


def accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[float, float]:
    """Accuracy and macro F1 over the classes present in truth or prediction (sklearn's rule)."""
    if not len(y_true):
        return float("nan"), float("nan")
    f1s = []
    for c in range(n_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        support = np.sum(y_true == c) + np.sum(y_pred == c)
        if support:
            f1s.append(2 * tp / support)
    return float(np.mean(y_true == y_pred)), float(np.mean(f1s))


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every Linear layer, for CPU serving."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.cpu().eval(), {nn.Linear},
                                                      dtype=torch.qint8)


def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the smallest-magnitude weights of the encoder's Linear layers (global L1 pruning)."""
    from torch.nn.utils import prune

    targets = [(m, "weight") for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return model


# --- the saved folder --------------------------------------------------------------------------

def save_folder(model: SequenceClassifier, tok: Tokenizer, spec: TextSpec, folder: Path,
                quantize: str | None = None) -> None:
    """Write weights, encoder config, tokenizer and head settings: all a fresh process needs."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; served/copied by others
    model.encoder.config.to_json_file(str(folder / ENCODER_CONFIG_FILE))
    tok.save(str(folder / TOKENIZER_FILE))
    info = {"n_classes": model.head.out_features, "max_seq_len": spec.max_seq_len,
            "truncation": spec.truncation, "pad_id": tok.token_to_id("[PAD]"), "quantize": quantize}
    (folder / CLASSIFIER_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


def set_quantize_flag(folder: Path, quantize: str | None) -> None:
    """Mark a saved folder to be quantized when loaded (fp32 weights stay the source of truth)."""
    info = json.loads((folder / CLASSIFIER_FILE).read_text(encoding="utf-8"))
    info["quantize"] = quantize
    (folder / CLASSIFIER_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


def load_fp32(folder: Path) -> tuple[SequenceClassifier, dict[str, Any]]:
    """A saved folder's classifier with its fp32 weights (CPU, train mode as built) and its
    classifier info (classes, max_seq_len, quantize, ...): what serving and explanations load."""
    folder = Path(folder)
    info = json.loads((folder / CLASSIFIER_FILE).read_text(encoding="utf-8"))
    config = BertConfig.from_json_file(str(folder / ENCODER_CONFIG_FILE))
    model = SequenceClassifier(BertModel(config, add_pooling_layer=False), info["n_classes"],
                               config.hidden_dropout_prob)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model, info


class Predictor:
    """A loaded folder: texts in, probabilities out (int8 folders are quantized at load, CPU)."""

    def __init__(self, folder: Path, device: torch.device | None = None, batch_size: int = 64):
        folder = Path(folder)
        model, info = load_fp32(folder)
        self.quantize = info.get("quantize")
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() and not self.quantize
                                  else "cpu")
        self.device = device
        self.model = (quantize_int8(model) if self.quantize == "dynamic_int8" else model)
        self.model = self.model.to(device).eval()
        self.tok = load_tokenizer(folder / TOKENIZER_FILE)
        self.spec = TextSpec(info["max_seq_len"], info.get("truncation", "head_tail"))
        self.pad_id = int(info["pad_id"])
        self.batch_size = batch_size

    def predict_proba(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        ids = encode(self.tok, [str(t) for t in texts], self.spec)
        if not ids:
            return np.zeros((0, self.model.head.out_features))
        return predict_proba_ids(self.model, ids, self.pad_id, self.batch_size, self.device,
                                 progress)

