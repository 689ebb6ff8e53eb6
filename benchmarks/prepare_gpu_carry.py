"""Pack what benchmarks/gpu_finetune.py needs on a bare GPU box (<= 64 MiB, no network there).

Writes to --out (default benchmarks/out/gpu_carry, git-ignored):
  minilm/config.json, minilm/tokenizer.json, minilm/model.safetensors  (fp16 encoder weights)
  imdb.npz   train/test token ids (uint16, [CLS] ... [SEP], cut to --max-seq-len head+tail),
             as one flat array + offsets per split, and 0/1 labels (1 = pos)
  manifest.json

Run from the project root:  python benchmarks/prepare_gpu_carry.py
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.train.transformer.torch_classifier import minilm_folder
from tasks.train.transformer.torch_model import TextSpec, encode, load_tokenizer
from textloop.core.text import normalize_text

log = logging.getLogger("prepare_gpu_carry")
LIMIT_BYTES = 64 * 2**20
CLASSES = ["neg", "pos"]


def pack_weights(src: Path, dst: Path) -> None:
    """The encoder weights in fp16 (half the size), without the unused pooler."""
    dst.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(src / "model.safetensors")).items()
             if v.is_floating_point() and not k.startswith("pooler.")}
    save_file(state, str(dst / "model.safetensors"))
    for name in ("config.json", "tokenizer.json"):
        shutil.copy2(src / name, dst / name)


def pack_split(df: pd.DataFrame, tok: object, spec: TextSpec) -> dict[str, np.ndarray]:
    """Normalize as the pipeline does, tokenize, and store ragged ids flat + offsets."""
    texts = [normalize_text(t) for t in df["text"]]
    ids = encode(tok, texts, spec)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    return {"ids": np.concatenate(ids).astype(np.uint16),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "labels": np.array([CLASSES.index(v) for v in df["label"]], dtype=np.uint8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imdb", type=Path, default=Path("/work/shared/data/imdb"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu_carry"))
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--truncation", default="head_tail", choices=["head", "head_tail"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    src = minilm_folder()
    pack_weights(src, args.out / "minilm")
    tok = load_tokenizer(src / "tokenizer.json")
    if tok.get_vocab_size() > np.iinfo(np.uint16).max:
        raise SystemExit("vocabulary too large for uint16 ids")
    spec = TextSpec(args.max_seq_len, args.truncation)
    arrays = {}
    for split in ("train", "test"):
        log.info("tokenizing IMDb %s", split)
        for key, value in pack_split(pd.read_parquet(args.imdb / f"{split}.parquet"), tok, spec).items():
            arrays[f"{split}_{key}"] = value
    np.savez_compressed(args.out / "imdb.npz", **arrays)
    manifest = {"max_seq_len": args.max_seq_len, "truncation": args.truncation, "classes": CLASSES,
                "pad_id": tok.token_to_id("[PAD]"), "normalize": {"strip_html": True, "lowercase": False},
                "rows": {s: len(arrays[f"{s}_labels"]) for s in ("train", "test")}}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    log.info("wrote %s: %.1f MiB", args.out, total / 2**20)
    if total > LIMIT_BYTES:
        raise SystemExit(f"carry is {total / 2**20:.1f} MiB > 64 MiB: lower --max-seq-len")


if __name__ == "__main__":
    main()
