"""Render benchmarks/RESULTS.md, the one table of benchmark figures, from benchmarks/out/*.json
(the records benchmarks/peers.py writes: one per figure, with its peer, command, commit, date,
machine and load). Files without a "figure" key are other benchmarks' raw outputs, and --quick
records are trial sizes: both skipped.

Usage: python benchmarks/results.py [--out-dir benchmarks/out] [--to benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("figure", "value", "peer", "ratio", "CPU s", "peak RSS MB", "peak PSS MB", "load",
           "command", "commit", "date", "machine")
HEADER = """# Benchmark results

Rendered by `python benchmarks/results.py` from `benchmarks/out/*.json`, which
`python benchmarks/peers.py` writes. Each figure is measured beside its peer in the same run on
the same machine: the ratio (value / peer) is what compares across runs, the absolute values move
with the load (1, 5 and 15-minute load averages at the end of the figure). CPU s and peak memory are
those of textloop's process tree while the figure was measured (the peer's in brackets): peak RSS
sums each process's resident memory, counting a page that processes share once per process; peak
PSS splits shared pages between them (— where a record predates it).

"""
log = logging.getLogger(__name__)


def records(out_dir: Path) -> list[dict]:
    """The per-figure records in out_dir, in a stable order (by figure name)."""
    out = []
    for path in sorted(out_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: not readable JSON (%s), skipped", path, exc)
            continue
        if isinstance(rec, dict) and "figure" in rec and not rec.get("quick"):
            out.append(rec)
    return sorted(out, key=lambda r: r["figure"])


def cell(value: object) -> str:
    """One table cell: numbers compact, lists joined, pipes escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    elif isinstance(value, list):
        text = " ".join(cell(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|")


def row(rec: dict) -> list[str]:
    """A record as the table's cells."""
    unit = rec.get("unit", "")
    both = lambda a, b: f"{cell(rec.get(a))} ({cell(rec.get(b))})"
    return [f"{rec['figure']}: {rec.get('what', '')}", f"{cell(rec['value'])} {unit}",
            f"{cell(rec.get('peer_value'))} {unit}, {rec.get('peer', '')}",
            f"{cell(rec.get('ratio'))} ({rec.get('better', '')} is better)",
            both("cpu_s", "peer_cpu_s"), both("peak_rss_mb", "peer_peak_rss_mb"),
            both("peak_pss_mb", "peer_peak_pss_mb"),
            cell(rec.get("load")), f"`{rec.get('command', '')}`", cell(rec.get("commit")),
            cell(rec.get("date")), cell(rec.get("machine"))]


def render(recs: list[dict]) -> str:
    """The whole RESULTS.md text."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in recs]
    return HEADER + "\n".join(lines) + "\n"


def main() -> int:
    """Write RESULTS.md; exit 1 when there is nothing to render."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--to", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    recs = records(args.out_dir)
    if not recs:
        log.error("no figure records in %s: run benchmarks/peers.py first", args.out_dir)
        return 1
    args.to.write_text(render(recs))
    log.info("wrote %s (%d figures)", args.to, len(recs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
