"""Cost of the near-duplicate split rule (tasks/shard/neardup.py) before and after vectorising it.

For the embedded default corpus (tweets) and IMDb (train.parquet as data, test.parquet as the
explicit test set), through the real ingest, clean and label code:
- shard seconds (`assign_splits`) with the rule (vectorised numpy version) and without it;
- grouping seconds of the vectorised `near_duplicate_groups` and of the datasketch reference
  `near_duplicate_groups_reference` (one MinHash + LSH insert/query per text, the old code),
  and whether their groups are equal (on all rows, or the first --sample rows).

Usage: python benchmarks/neardup.py [--imdb DIR] [--skip-imdb] [--sample N]
Writes benchmarks/out/neardup.json and prints it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def default_corpus(work: Path) -> tuple:
    """The labeled rows of the embedded default corpus and default params."""
    from tasks.clean.clean_parts import clean_frame
    from tasks.ingest import ingest
    from tasks.label import split_trusted
    from textloop.core.config import Params

    p = Params()
    (work / "feedback").mkdir(parents=True, exist_ok=True)
    raw, _ = ingest(p.ingest, work, work / "feedback", merge_case=True)
    kept, _, _ = clean_frame(raw, p.clean.strip_html, p.clean.lowercase, p.clean.min_chars)
    labeled, _, _ = split_trusted(kept, p.label)
    return labeled, p


def measure(labeled, p, sample: int | None) -> dict:
    """Shard seconds with/without the rule, grouping seconds new vs reference, equal groups."""
    from tasks.shard.neardup import near_duplicate_groups, near_duplicate_groups_reference
    from tasks.shard.shard_parts import assign_splits, split_report

    nd = p.shard.near_duplicates
    out: dict = {"rows": len(labeled), "params": nd.model_dump()}
    for name, enabled in (("shard_seconds_with_rule", True), ("shard_seconds_without_rule", False)):
        cfg = p.shard.model_copy(update={"near_duplicates": nd.model_copy(
            update={"enabled": enabled})})
        start = time.perf_counter()
        split, quarantined = assign_splits(labeled, cfg)
        out[name] = round(time.perf_counter() - start, 2)
        if enabled:
            out["near_duplicates"] = split_report(split, len(labeled), quarantined)[
                "near_duplicates"]
    texts = labeled["text"].tolist()[:sample] if sample else labeled["text"].tolist()
    args = (nd.threshold, nd.shingle_words, nd.num_perm)
    start = time.perf_counter()
    fast = near_duplicate_groups(texts, *args)
    out["grouping_seconds_vectorised"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    ref = near_duplicate_groups_reference(texts, *args)
    out["grouping_seconds_datasketch_reference"] = round(time.perf_counter() - start, 2)
    out["compared_rows"] = len(texts)
    out["groups_equal_to_reference"] = bool(np.array_equal(fast, ref))
    out["texts_in_groups_of_2_plus"] = int((np.bincount(fast)[fast] > 1).sum())
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--imdb", type=Path, default=Path("/work/shared/data/imdb"))
    ap.add_argument("--skip-imdb", action="store_true")
    ap.add_argument("--sample", type=int, default=None, help="rows compared with the reference")
    args = ap.parse_args()
    from evidence import imdb_frames

    result: dict = {"load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        result["default_corpus"] = measure(*default_corpus(Path(tmp)), args.sample)
    if not args.skip_imdb:
        with tempfile.TemporaryDirectory() as tmp:
            result["imdb"] = measure(*imdb_frames(args.imdb, Path(tmp)), args.sample)
    result["load_after"] = os.getloadavg()[0]
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "neardup.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if all(r["groups_equal_to_reference"] for k, r in result.items()
                    if isinstance(r, dict)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
