"""Active-learning benchmark on IMDb (../shared/data/imdb): a simulated oracle answers from the
hidden train labels.

Start with `--start` random labeled train reviews, then `--rounds` rounds of `--batch` labels
picked by each strategy (tasks/active.select_batch: `random`, pure `uncertainty`, and
`uncertainty` + diversity = `diverse`, and `balanced`: diverse with the picks shared
equally among the predicted classes), for each seed; test accuracy on all 25k test reviews
after each round. The text is vectorised once (word 1-2-gram sublinear tf-idf whose vocabulary
and idf come from train + unsup, i.e. unlabeled text only); the model is logistic regression
(`--model lr`) or textloop's NB-weighted LR (`--model nblr`). The queryable pool is the rest of
train (unsup reviews have no true label, so the oracle cannot answer them); unsup reviews feed
the vocabulary/idf and the pseudo-label step.

Then the label-efficient path at the final gold-label count: the diverse-uncertainty labels,
the best CPU head, plus pseudo-labels (a minimal self-training written here: the model labels
unsup + unqueried train reviews, the most confident `--pseudo-per-class` of each class are added
with their predicted label, one more fit). Writes benchmarks/out/active_learning.{json,png}.

Usage: python benchmarks/active_learning.py [--seeds 3] [--rounds 10] [--batch 100]
[--start 200] [--model lr|nblr] [--limit N]"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _paths import default_imdb

sys.path.insert(0, str(REPO))

from tasks.active import select_batch
from textloop.core.text import normalize_text

STRATEGIES = {"random": ("random", False, False), "uncertainty": ("uncertainty", False, False),
              "diverse": ("uncertainty", True, False), "balanced": ("uncertainty", True, True)}



def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--start", type=int, default=200)
    ap.add_argument("--model", default="lr", choices=["lr", "nblr"])
    ap.add_argument("--C", type=float, default=None, help="default: 10 (lr), 4 (nblr)")
    ap.add_argument("--candidates", type=int, default=5, help="candidates per pick (diversity)")
    ap.add_argument("--pseudo-per-class", type=int, default=5000)
    ap.add_argument("--strategies", default="random,uncertainty,diverse,balanced")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--limit", type=int, default=None, help="rows per file (smoke runs)")
    return ap.parse_args()


def load(imdb: Path, limit: int | None) -> dict[str, pd.DataFrame]:
    """train/test/unsup frames, texts normalised by the one rule (textloop/core/text.py)."""
    out = {}
    for name in ("train", "test", "unsup"):
        df = pd.read_parquet(imdb / f"{name}.parquet")
        if limit:
            df = df.sample(min(limit, len(df)), random_state=0)
        df = df.reset_index(drop=True)
        df["text"] = [normalize_text(t) for t in df["text"]]
        out[name] = df
    return out


def vectorise(data: dict[str, pd.DataFrame]) -> dict[str, object]:
    """Fit tf-idf on train + unsup texts (no labels, no test text), transform all three once."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.9, sublinear_tf=True,
                          dtype=np.float32)
    vec.fit(pd.concat([data["train"]["text"], data["unsup"]["text"]]))
    return {k: vec.transform(v["text"]) for k, v in data.items()}


def cached_inputs(args: argparse.Namespace) -> tuple[dict, dict, np.ndarray, list[str]]:
    """Matrices, labels, SVD features and train texts; cached under --out (the vectorising is
    most of the CPU time, and it does not depend on the strategy)."""
    import pickle

    cache = args.out / f"active_learning_cache_{args.limit or 'all'}.pkl"
    if cache.is_file():
        with cache.open("rb") as fh:
            return pickle.load(fh)
    data = load(args.imdb, args.limit)
    X = vectorise(data)
    y = {k: data[k]["label"].astype(str).to_numpy() for k in ("train", "test")}
    out = (X, y, svd_features(X["train"]), data["train"]["text"].tolist())
    args.out.mkdir(parents=True, exist_ok=True)
    with cache.open("wb") as fh:
        pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return out


def svd_features(X: object, dims: int = 100) -> np.ndarray:
    """A cheap dense embedding of the pool for the diversity step (truncated SVD of tf-idf)."""
    from sklearn.decomposition import TruncatedSVD

    return TruncatedSVD(n_components=dims, random_state=0).fit_transform(X)


def make_model(kind: str, C: float | None, seed: int) -> object:
    """The classifier refitted every round."""
    if kind == "nblr":
        from tasks.train import NBLogisticRegression

        return NBLogisticRegression(C=C or 4.0, random_state=seed)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C or 10.0, max_iter=2000, solver="liblinear", random_state=seed)


def run_curve(X: dict, y: dict, feats: np.ndarray, texts: list[str], args: argparse.Namespace,
              strategy: str, seed: int) -> tuple[list[int], list[float], np.ndarray]:
    """One learning curve: (labels used, test accuracy) per round, and the final labeled rows."""
    rng = np.random.default_rng(seed)
    labeled = rng.choice(X["train"].shape[0], args.start, replace=False)
    name, diverse, balance = STRATEGIES[strategy]
    sizes, accs = [], []
    for rnd in range(args.rounds + 1):
        model = make_model(args.model, args.C, seed).fit(X["train"][labeled], y["train"][labeled])
        sizes.append(len(labeled))
        accs.append(float((model.predict(X["test"]) == y["test"]).mean()))
        if rnd == args.rounds:
            break
        pool = np.setdiff1d(np.arange(X["train"].shape[0]), labeled)
        proba = model.predict_proba(X["train"][pool])
        batch = select_batch([texts[i] for i in pool], proba, args.batch, name,
                             features=feats[pool], diversity=diverse,
                             candidates_per_pick=args.candidates, seed=seed * 1000 + rnd,
                             balance=balance)
        labeled = np.concatenate([labeled, pool[batch["position"].to_numpy()]])
    return sizes, accs, labeled


def pseudo_label(X: dict, y: dict, labeled: np.ndarray, args: argparse.Namespace,
                 seed: int) -> dict[str, float]:
    """Minimal self-training: gold rows + the most confident `pseudo_per_class` predictions per
    class over unsup and unqueried train reviews (their true labels never read), one refit."""
    import scipy.sparse as sp

    gold = make_model(args.model, args.C, seed).fit(X["train"][labeled], y["train"][labeled])
    base = float((gold.predict(X["test"]) == y["test"]).mean())
    rest = np.setdiff1d(np.arange(X["train"].shape[0]), labeled)
    pool = sp.vstack([X["unsup"], X["train"][rest]], format="csr")
    proba = gold.predict_proba(pool)
    pick, pseudo_y = [], []
    for k, cls in enumerate(gold.classes_):
        mine = np.flatnonzero(proba.argmax(axis=1) == k)
        top = mine[np.argsort(-proba[mine, k])][: args.pseudo_per_class]
        pick.append(top)
        pseudo_y.append(np.full(len(top), cls))
    pick_all = np.concatenate(pick)
    Xa = sp.vstack([X["train"][labeled], pool[pick_all]], format="csr")
    ya = np.concatenate([y["train"][labeled], *pseudo_y])
    model = make_model(args.model, args.C, seed).fit(Xa, ya)
    acc = float((model.predict(X["test"]) == y["test"]).mean())
    return {"gold_only": base, "with_pseudo": acc, "pseudo_rows": len(pick_all)}


def plot(curves: dict[str, list[list[float]]], sizes: list[int], path: Path) -> None:
    """Mean ± min/max learning curve per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in curves.items():
        arr = np.array(runs) * 100
        ax.plot(sizes, arr.mean(axis=0), marker="o", label=f"{name} (mean of {len(runs)})")
        ax.fill_between(sizes, arr.min(axis=0), arr.max(axis=0), alpha=0.15)
    ax.set_xlabel("gold labels")
    ax.set_ylabel("IMDb test accuracy (%, 25k reviews)")
    ax.set_title("active learning on IMDb")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    """Curves per strategy and seed, then the label-efficient path; JSON + PNG + a summary."""
    args = parse_args()
    t0 = time.perf_counter()
    X, y, feats, texts = cached_inputs(args)
    print(f"vectorised in {time.perf_counter() - t0:.1f} s: train {X['train'].shape}", flush=True)
    curves: dict[str, list[list[float]]] = {}
    finals: dict[str, list[np.ndarray]] = {}
    sizes: list[int] = []
    for strategy in args.strategies.split(","):
        for seed in range(args.seeds):
            t1 = time.perf_counter()
            sizes, accs, labeled = run_curve(X, y, feats, texts, args, strategy, seed)
            curves.setdefault(strategy, []).append(accs)
            finals.setdefault(strategy, []).append(labeled)
            print(f"{strategy} seed {seed}: {[round(a * 100, 2) for a in accs]} "
                  f"({time.perf_counter() - t1:.1f} s)", flush=True)
    summary = {s: round(float(np.mean([c[-1] for c in runs])) * 100, 2)
               for s, runs in curves.items()}
    best = next((s for s in ("balanced", "diverse") if s in finals), next(iter(finals)))
    pseudo = [pseudo_label(X, y, lab, args, seed) for seed, lab in enumerate(finals[best])]
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "sizes": sizes,
              "curves": curves, "mean_accuracy_at_final": summary,
              "label_efficient": {"strategy": best, "runs": pseudo,
                                  "mean_gold_only": round(np.mean([p["gold_only"] for p in pseudo]) * 100, 2),
                                  "mean_with_pseudo": round(np.mean([p["with_pseudo"] for p in pseudo]) * 100, 2)},
              "seconds": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"active_learning_{args.model}{args.tag}"
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=2))
    plot(curves, sizes, args.out / f"{tag}.png")
    print(json.dumps({k: result[k] for k in ("mean_accuracy_at_final", "label_efficient",
                                             "seconds")}, indent=2))


if __name__ == "__main__":
    main()
