"""Big corpora: ingest -> clean -> label -> shard partitioned (Dask) vs in memory, and batch
scoring of 1M texts in partitions (textloop/pipeline/executor.py).

Corpora of N reviews are built by resampling IMDb train+unsup (benchmarks/_paths.default_imdb):
row i is base review b_i (uniform over the 75k) with one word replaced and a unique tag appended
(" #<i>"), so rows differ exactly unless planted: 1% of the rows are exact copies (after
normalisation: leading and trailing whitespace; an appended `<br />` is not safe, it closes a
stray '<' of the original and the HTML stripper then drops the text between) of a row at least one partition earlier. The
duplicates clean finds must equal those planted. Rows from unsup carry no label (they go to the
labeling queue); the ~N/75k resamples of each review are near-duplicates of each other.

Each (size, mode) runs in its own child process on a fresh project (textloop init) through the
stage functions (`textloop stage` in process): wall and CPU seconds (self + children), peak RSS
and PSS of the process tree (psutil, sampled every 0.2 s; the RSS sum counts pages shared with
forked helpers twice) and ru_maxrss (self; reaped children, which a fork inherits), the
time per row, dedupe counts, and a digest of the shard files (partitioned == in memory).
Then the scoring child trains a word TF-IDF + logistic regression on IMDb train (the tests'
train_tiny baseline) and scores the largest corpus with the partitioned `textloop predict`
path: docs/s and peak RSS.

Usage: python benchmarks/big_corpus.py [--sizes 100000,300000,1000000] [--in-memory-max 300000]
       [--score-rows 1000000] [--work DIR] [--set backend.partition_rows=25000 ...]
       (corpora and projects in a temp folder; --set applies to the partitioned runs)
Prints one JSON document and writes benchmarks/out/big_corpus.json."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
CHUNK = 50_000
PLANT_SHARE = 0.01


def _base(imdb: Path) -> tuple[list[str], list[str | None], np.ndarray]:
    """IMDb train + unsup texts, labels (None for unsup) and ratings (NaN for unsup)."""
    import pandas as pd

    train = pd.read_parquet(imdb / "train.parquet", columns=["text", "label", "rating"])
    unsup = pd.read_parquet(imdb / "unsup.parquet", columns=["text"])
    texts = train["text"].tolist() + unsup["text"].tolist()
    labels = train["label"].tolist() + [None] * len(unsup)
    rating = np.r_[train["rating"].to_numpy(float), np.full(len(unsup), np.nan)]
    return texts, labels, rating


def _row_text(i: int, b: int, texts: list[str]) -> str:
    """Row i's text: base review b, one word (chosen by i) replaced, tagged with i."""
    words = texts[b].split(" ")
    k = (i * 2654435761) % len(words)
    words[k] = ("great", "awful", "film", "movie", "plot", "actor")[i % 6]
    return " ".join(words) + f" #{i}"


def build(n: int, dest: Path, imdb: Path, seed: int = 0) -> dict:
    """Write the N-row corpus as Parquet (row groups of CHUNK) without holding it in memory;
    returns what was planted."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, labels, rating = _base(imdb)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, len(texts), size=n)
    gap = min(CHUNK, n // 10)  # a copy sits at least a partition after its original
    planted = np.zeros(n, dtype=np.int64) - 1
    chosen = np.sort(rng.choice(np.arange(gap, n), size=int(n * PLANT_SHARE), replace=False))
    for i, j in zip(chosen, (rng.random(len(chosen)) * (chosen - gap)).astype(np.int64),
                    strict=True):
        planted[i] = planted[j] if planted[j] >= 0 else j  # always an original row's text
    writer = None
    for start in range(0, n, CHUNK):
        rows = range(start, min(start + CHUNK, n))
        src = [int(planted[i]) if planted[i] >= 0 else i for i in rows]
        out = [_row_text(s, int(base[s]), texts) for s in src]
        out = [(" \t " + t + "  \n") if planted[i] >= 0 else t  # equal once normalised
               for i, t in zip(rows, out, strict=True)]
        df = pd.DataFrame({"text": out, "label": [labels[base[s]] for s in src],
                           "rating": [rating[base[s]] for s in src]})
        schema = pa.schema([("text", pa.string()), ("label", pa.string()), ("rating", pa.float64())])
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        writer = writer or pq.ParquetWriter(dest, schema)
        writer.write_table(table)
    writer.close()
    return {"rows": n, "planted_duplicates": len(chosen), "base_reviews": len(texts)}


class PeakRss:
    """Peak memory of this process plus all its descendants, sampled every 0.2 s: the sum of
    RSS (`peak`: counts pages a forked helper, git or dvc, shares with us twice) and the sum of
    PSS (`peak_pss`: shared pages split between the processes sharing them)."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self.peak_pss = psutil.Process(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            rss = pss = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that just exited
                    info = p.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _cpu() -> tuple[float, float]:
    """CPU seconds so far: this process, its reaped children (Dask worker processes, git, dvc)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _usage(start: float, cpu0: tuple[float, float]) -> dict:
    """Wall and CPU (self, reaped children) seconds since `start` / `cpu0`, and ru_maxrss (MB,
    whole process life)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = _cpu()
    return {"wall_s": round(time.perf_counter() - start, 1),
            "cpu_self_s": round(cpu[0] - cpu0[0], 1),
            "cpu_children_s": round(cpu[1] - cpu0[1], 1),
            "ru_maxrss_self_mb": round(me.ru_maxrss / 1024), "ru_maxrss_children_mb":
                round(kids.ru_maxrss / 1024)}


def child_stages(root: Path, partitioned: bool, sets: list[str]) -> dict:
    """In a child process: the four stages on the project at root; usage, counts, shard digest."""
    import yaml

    from textloop.core.config import apply_overrides
    from textloop.core.layout import Project, configure
    from textloop.pipeline import stages

    os.chdir(root)
    project = Project(root)
    configure(project)
    extra = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in sets)} if partitioned else {}
    apply_overrides(project.params_path, {"backend.partitioned": partitioned, **extra})
    rss, start, cpu0, seconds = PeakRss(), time.perf_counter(), _cpu(), {}
    for name in ("ingest", "clean", "label", "shard"):
        t = time.perf_counter()
        stages.run_stage(name, project)
        seconds[name] = round(time.perf_counter() - t, 1)
    out = {**_usage(start, cpu0), "peak_rss_tree_mb": round(rss.stop() / 2**20),
           "peak_pss_tree_mb": round(rss.peak_pss / 2**20), "stage_s": seconds}
    clean = json.loads((root / "metrics/clean.json").read_text())
    split = json.loads((root / "metrics/split.json").read_text())
    h = hashlib.md5()
    for f in sorted((root / "data/04_shards").rglob("*.parquet")):
        h.update(f.read_bytes())
    out.update(clean_by_reason=clean["quarantined_by_reason"], rows_out=clean["rows_out"],
               splits={k: v["rows"] for k, v in split["splits"].items()},
               near_duplicates=split.get("near_duplicates"), shards_md5=h.hexdigest())
    return out


def child_score(root: Path, corpus: Path, imdb: Path) -> dict:
    """In a child process: train the word TF-IDF + LR baseline on IMDb train, then score the
    corpus with the partitioned predict path; docs/s and peak RSS."""
    import pandas as pd

    from tasks.evaluate.metrics import predict_batched
    from tests.support.fixtures import train_tiny
    from textloop.core.layout import Project, configure
    from textloop.pipeline.batch_predict import predict_file
    from textloop.pipeline.models import load_classifier

    os.chdir(root)
    project = Project(root)
    configure(project)
    t = time.perf_counter()
    folder = train_tiny(pd.read_parquet(imdb / "train.parquet", columns=["text", "label"]),
                        root / "bench-model")
    train_s = round(time.perf_counter() - t, 1)
    model = load_classifier(folder)
    rss, start, cpu0 = PeakRss(), time.perf_counter(), _cpu()
    counts, acc = predict_file(project, corpus, root / "scored.parquet", "text", "label",
                               lambda texts: predict_batched(model, texts, 2048),
                               [str(c) for c in model.classes_], {}, "bench")
    out = {**_usage(start, cpu0), "peak_rss_tree_mb": round(rss.stop() / 2**20),
           "peak_pss_tree_mb": round(rss.peak_pss / 2**20), "train_s": train_s,
           "rows": counts["rows"], "predicted": counts["predicted"],
           # a sanity figure, not a quality one: the corpus resamples the training reviews
           "accuracy_on_resampled_labeled_rows": round(acc["accuracy"], 4) if acc else None}
    out["docs_per_s"] = round(counts["predicted"] / out["wall_s"])
    return out


def _child(args: list[str]) -> dict:
    """Run this script as a child (fresh process: its own RSS and CPU) and parse its JSON."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env, check=False)
    if res.returncode:
        raise RuntimeError(f"child {args} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _project(work: Path, name: str, corpus: Path) -> Path:
    """A fresh project (textloop init) reading `corpus`."""
    from textloop.cli.scaffold import init_project

    return init_project(REPO, work / name, {"ingest.source": str(corpus),
                                            "ingest.include_feedback": False})


def main() -> None:
    from _paths import default_imdb

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--in-memory-max", type=int, default=300_000)
    ap.add_argument("--score-rows", type=int, default=1_000_000)
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params.yaml override of the partitioned runs (backend.partition_rows=...)")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="big-corpus-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"load_before": os.getloadavg(), "cores": os.cpu_count(), "sets": a.set,
                    "runs": []}
    for n in [int(x) for x in a.sizes.split(",")]:
        corpus = work / f"corpus-{n}.parquet"
        t = time.perf_counter()
        planted = build(n, corpus, a.imdb)
        row = {**planted, "build_s": round(time.perf_counter() - t, 1)}
        modes = [("partitioned", True)] + ([("in_memory", False)] if n <= a.in_memory_max else [])
        for mode, flag in modes:
            root = _project(work, f"p-{n}-{mode}", corpus)
            row[mode] = _child(["_stages", str(root), str(int(flag)), *a.set])
            row[mode]["s_per_1k_rows"] = round(row[mode]["wall_s"] / n * 1000, 3)
            row[mode]["load"] = os.getloadavg()
        found = row["partitioned"]["clean_by_reason"].get("duplicate_text", 0)
        row["duplicates_found_vs_planted"] = [found, planted["planted_duplicates"]]
        if "in_memory" in row:
            row["same_shards"] = row["in_memory"]["shards_md5"] == row["partitioned"]["shards_md5"]
        result["runs"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if n == a.score_rows:
            result["scoring"] = _child(["_score", str(work / f"p-{n}-partitioned"), str(corpus),
                                        str(a.imdb)])
            result["scoring"]["load"] = os.getloadavg()
    out = REPO / "benchmarks" / "out" / "big_corpus.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_stages":
        print(json.dumps(child_stages(Path(sys.argv[2]), bool(int(sys.argv[3])), sys.argv[4:])))
    elif len(sys.argv) > 1 and sys.argv[1] == "_score":
        print(json.dumps(child_score(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
    else:
        main()
