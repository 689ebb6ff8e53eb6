"""Frozen MiniLM sentence embeddings of IMDb, computed once and cached for the label benchmarks.

The packaged all-MiniLM-L6-v2 encoder (tasks.embedding_drift.MiniLMEncoder: mean pooling, L2
norm), texts cleaned as the clean stage does (HTML stripped), the first 256 tokens. Texts are
embedded shortest first (little padding) in chunks saved as they finish, so a killed run resumes.
Output: benchmarks/out/emb/<split>[_<limit>].npy, float16, one row per parquet row (file order).
Embedding 50k reviews costs ~10-20 CPU minutes; everything else reads the cache.

Usage: python benchmarks/embed_imdb.py [train test unsup] [--limit N] [--threads 2]"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _paths import default_imdb

sys.path.insert(0, str(REPO))

from textloop.core.text import normalize_text

OUT = REPO / "benchmarks" / "out" / "emb"
CHUNK = 2048


def cache_path(split: str, limit: int | None = None, out: Path = OUT) -> Path:
    """Where one split's embeddings live (limit: the first N parquet rows only)."""
    return out / f"{split}{f'_{limit}' if limit else ''}.npy"


def load_embeddings(split: str, limit: int | None = None, out: Path = OUT) -> np.ndarray | None:
    """The cached (n, 384) float32 embeddings of a split, or None when not computed yet."""
    path = cache_path(split, limit, out)
    return np.load(path).astype(np.float32) if path.is_file() else None


def embed_split(texts: list[str], path: Path, max_seq_len: int = 256) -> np.ndarray:
    """Embed `texts` (shortest first, chunked, resumable) and save float16 at `path`."""
    from tasks.embedding_drift import MiniLMEncoder

    enc = MiniLMEncoder(batch_size=32, max_seq_len=max_seq_len, cache_size=0)
    order = np.argsort([len(t) for t in texts], kind="stable")
    parts = path.parent / f"{path.stem}_parts"
    parts.mkdir(parents=True, exist_ok=True)
    out = np.zeros((len(texts), 384), dtype=np.float16)
    t0 = time.perf_counter()
    for start in range(0, len(order), CHUNK):
        rows = order[start:start + CHUNK]
        part = parts / f"{start:07d}.npy"
        if not part.is_file():
            batches = [enc._embed([texts[i] for i in rows[b:b + 32]])
                       for b in range(0, len(rows), 32)]
            np.save(part, np.vstack(batches).astype(np.float16))
            print(f"{path.stem}: {start + len(rows)}/{len(texts)} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        out[rows] = np.load(part)
    np.save(path, out)
    return out


def main() -> None:
    """Embed the named splits that are not cached yet."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("splits", nargs="*", default=["train", "test"])
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for split in args.splits:
        path = cache_path(split, args.limit)
        if path.is_file():
            continue
        df = pd.read_parquet(args.imdb / f"{split}.parquet")
        if args.limit:
            df = df.head(args.limit)
        embed_split([normalize_text(t, strip_html=True) for t in df["text"]], path)


if __name__ == "__main__":
    main()
