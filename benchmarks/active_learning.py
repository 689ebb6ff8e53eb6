"""Active-learning benchmark on IMDb (../shared/data/imdb): a simulated oracle answers from the
hidden train labels.

Start with `--start` random labeled train reviews, then `--rounds` rounds of `--batch` labels
picked by each strategy (tasks/active.select_batch: `random`, pure `uncertainty`, `diverse` =
uncertainty + diversity, `balanced` = diverse with the picks shared equally among the predicted
classes, `warm` = diverse after a random warm-up until `--warmup` labels, the rule of
label.active.warmup_labels, `warm_balanced` = balanced after that warm-up), for each seed; test accuracy on the 25k test reviews (or a
`--test-limit` sample) after each round. The text is vectorised once (word 1-2-gram sublinear
tf-idf whose vocabulary and idf come from train + unsup, i.e. unlabeled text only). The model
refitted each round is logistic regression (`--model lr`), textloop's NB-weighted LR (`nblr`,
NB ratios from the labeled rows), or `pnb`: logistic regression on the gold rows pseudo-labels
the unlabeled reviews (unsup + unqueried train; tasks.label.pseudo.pseudo_label, the most confident
`--pseudo-share` of them in the gold class mix) and NB-LR is refitted with NB ratios counted over
gold + pseudo rows and weights from the gold rows only (tasks.label.pseudo.pseudo_nb_fit). Unsup
reviews have no true label, so the oracle cannot answer them: the queryable pool is the rest of
train.

Then the label-efficient path at the final gold-label count, per seed, on the labels of the
strategy with the best mean final accuracy (random excluded): gold-only logistic regression vs the pseudo-label model, and the pseudo-label guard
(tasks.label.pseudo.pseudo_check_matrix, use=nb_ratios, label.pseudo.min_gain_se): the pseudo-label
model is kept only when its cross-validated gain on the gold rows beats its standard error.
Writes benchmarks/out/active_learning_<model><tag>.{json,png}; prints every README figure.

Usage: python benchmarks/active_learning.py [--seeds 3] [--rounds 10] [--batch 100]
[--start 200] [--model lr|nblr|pnb] [--strategies random,warm] [--jobs 3] [--limit N]"""

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

from tasks.label.active import select_batch, strategy_for
from tasks.label.pseudo import pseudo_check_matrix, pseudo_label, pseudo_nb_fit
from textloop.core.text import normalize_text

STRATEGIES = {"random": ("random", False, False), "uncertainty": ("uncertainty", False, False),
              "diverse": ("uncertainty", True, False), "balanced": ("uncertainty", True, True),
              "warm": ("uncertainty", True, False), "warm_balanced": ("uncertainty", True, True)}



def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--start", type=int, default=200)
    ap.add_argument("--model", default="pnb", choices=["lr", "nblr", "pnb"])
    ap.add_argument("--C", type=float, default=None, help="default: 10 (lr, pnb), 4 (nblr)")
    ap.add_argument("--warmup", type=int, default=400, help="`warm`: random picks below this")
    ap.add_argument("--pseudo-share", type=float, default=0.5,
                    help="pnb: the most confident share of the unlabeled reviews pseudo-labelled")
    ap.add_argument("--min-gain-se", type=float, default=1.0, help="label.pseudo.min_gain_se")
    ap.add_argument("--test-limit", type=int, default=None, help="score a seeded test sample")
    ap.add_argument("--jobs", type=int, default=1, help="curves computed in parallel")
    ap.add_argument("--candidates", type=int, default=5, help="candidates per pick (diversity)")
    ap.add_argument("--strategies", default="random,diverse,warm,warm_balanced")
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
    """The classifier refitted every round (pnb: see PseudoNB)."""
    if kind == "nblr":
        from tasks.train.baseline import NBLogisticRegression

        return NBLogisticRegression(C=C or 4.0, random_state=seed)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C or 10.0, max_iter=2000, solver="liblinear", random_state=seed)


class PseudoNB:
    """`--model pnb`: logistic regression on the gold rows pseudo-labels the unlabeled reviews
    (tasks.label.pseudo.pseudo_label: the most confident `share` of them, gold class mix), then
    tasks.label.pseudo.pseudo_nb_fit (NB ratios over gold + pseudo rows, weights from gold rows)."""

    def __init__(self, C: float | None, seed: int, unlabeled: object, share: float):
        self.C, self.seed, self.unlabeled, self.share = C or 10.0, seed, unlabeled, share

    def fit(self, X: object, y: np.ndarray) -> PseudoNB:
        base = make_model("lr", self.C, self.seed).fit(X, y)
        U = self.unlabeled
        mix = pd.Series(y).value_counts(normalize=True).to_dict()
        rows = pseudo_label(base.predict_proba(U), np.arange(U.shape[0]),
                            [str(c) for c in base.classes_], 0.5, int(self.share * U.shape[0]), mix)
        self.model = pseudo_nb_fit(X, y, U[rows["row_id"].to_numpy(dtype=int)],
                                   rows["label"].to_numpy(), self.C, seed=self.seed)
        self.classes_ = self.model.classes_
        return self

    def predict(self, X: object) -> np.ndarray:
        return self.model.predict(X)

    def predict_proba(self, X: object) -> np.ndarray:
        return self.model.predict_proba(X)


def unlabeled(X: dict, labeled: np.ndarray) -> object:
    """The reviews without a label to learn from: unsup + the train reviews not yet queried."""
    import scipy.sparse as sp

    rest = np.setdiff1d(np.arange(X["train"].shape[0]), labeled)
    return sp.vstack([X["unsup"], X["train"][rest]], format="csr")


def fit(X: dict, y: dict, labeled: np.ndarray, args: argparse.Namespace, seed: int) -> object:
    """The round's model on the labeled rows (pnb also reads the unlabeled reviews)."""
    model = (PseudoNB(args.C, seed, unlabeled(X, labeled), args.pseudo_share)
             if args.model == "pnb" else make_model(args.model, args.C, seed))
    return model.fit(X["train"][labeled], y["train"][labeled])


def run_curve(X: dict, y: dict, feats: np.ndarray, texts: list[str], args: argparse.Namespace,
              strategy: str, seed: int) -> tuple[list[int], list[float], np.ndarray]:
    """One learning curve: (labels used, test accuracy) per round, and the final labeled rows."""
    rng = np.random.default_rng(seed)
    labeled = rng.choice(X["train"].shape[0], args.start, replace=False)
    name, diverse, balance = STRATEGIES[strategy]
    sizes, accs = [], []
    for rnd in range(args.rounds + 1):
        model = fit(X, y, labeled, args, seed)
        sizes.append(len(labeled))
        accs.append(float((model.predict(X["test"]) == y["test"]).mean()))
        if rnd == args.rounds:
            break
        pool = np.setdiff1d(np.arange(X["train"].shape[0]), labeled)
        proba = model.predict_proba(X["train"][pool])
        now = strategy_for(name, len(labeled), args.warmup) if strategy.startswith("warm") else name
        batch = select_batch([texts[i] for i in pool], proba, args.batch, now,
                             features=feats[pool], diversity=diverse,
                             candidates_per_pick=args.candidates, seed=seed * 1000 + rnd,
                             balance=balance)
        labeled = np.concatenate([labeled, pool[batch["position"].to_numpy()]])
    return sizes, accs, labeled


def label_efficient(X: dict, y: dict, labeled: np.ndarray, args: argparse.Namespace,
                    seed: int) -> dict[str, object]:
    """At the final labels: gold-only LR, the pseudo-label model (pnb), the guard's verdict
    (cross-validated on the gold rows, label.pseudo.min_gain_se) and the accuracy kept."""
    def acc(model: object) -> float:
        return float((model.predict(X["test"]) == y["test"]).mean())

    gold = acc(make_model("lr", args.C, seed).fit(X["train"][labeled], y["train"][labeled]))
    args_pnb = argparse.Namespace(**{**vars(args), "model": "pnb"})
    pnb = acc(fit(X, y, labeled, args_pnb, seed))
    check = pseudo_check_matrix(X["train"][labeled], y["train"][labeled], unlabeled(X, labeled),
                                0.5, 0.0, 5, seed, args.min_gain_se, use="nb_ratios",
                                C=args.C or 10.0, pool_share=args.pseudo_share)
    kept = pnb if check["helps"] else gold
    return {"gold_only": gold, "with_pseudo": pnb, "check": {k: check[k] for k in (
        "gain", "gain_se", "helps", "pseudo_rows")}, "kept": kept, "gain": kept - gold}


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


def _curve_job(job: tuple[str, int]) -> tuple[str, int, list[int], list[float], np.ndarray, float]:
    """One (strategy, seed) curve in a worker (inputs from the fork's globals)."""
    strategy, seed = job
    t = time.perf_counter()
    sizes, accs, labeled = run_curve(*_INPUTS, _ARGS, strategy, seed)
    return strategy, seed, sizes, accs, labeled, time.perf_counter() - t


def main() -> None:
    """Curves per strategy and seed, then the label-efficient path; JSON + PNG + a summary."""
    global _INPUTS, _ARGS
    import os
    import resource
    from concurrent.futures import ProcessPoolExecutor

    args = parse_args()
    t0 = time.perf_counter()
    X, y, feats, texts = cached_inputs(args)
    if args.test_limit:
        keep = np.random.default_rng(123).choice(X["test"].shape[0], args.test_limit, replace=False)
        X, y = {**X, "test": X["test"][keep]}, {**y, "test": y["test"][keep]}
    print(f"inputs in {time.perf_counter() - t0:.1f} s: train {X['train'].shape}, "
          f"test {X['test'].shape[0]} reviews", flush=True)
    _INPUTS, _ARGS = (X, y, feats, texts), args
    jobs = [(s, seed) for s in args.strategies.split(",") for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:  # fork: inputs shared, not pickled
        done = list(pool.map(_curve_job, jobs))
    curves: dict[str, list[list[float]]] = {}
    finals: dict[str, list[np.ndarray]] = {}
    sizes: list[int] = []
    for strategy, seed, sizes, accs, labeled, secs in done:
        curves.setdefault(strategy, []).append(accs)
        finals.setdefault(strategy, []).append(labeled)
        print(f"{strategy} seed {seed}: {[round(a * 100, 2) for a in accs]} ({secs:.1f} s)",
              flush=True)
    summary = {s: round(float(np.mean([c[-1] for c in runs])) * 100, 2)
               for s, runs in curves.items()}
    best = max((s for s in finals if s != "random"), key=summary.get, default="random")
    path = [label_efficient(X, y, lab, args, seed) for seed, lab in enumerate(finals[best])]
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "sizes": sizes,
              "curves": curves, "mean_accuracy_at_final": summary,
              "gain_over_random": {s: round(v - summary["random"], 2) for s, v in summary.items()}
              if "random" in summary else None,
              "label_efficient": {"strategy": best, "runs": path,
                                  "mean_gold_only": round(np.mean([p["gold_only"] for p in path]) * 100, 2),
                                  "mean_with_pseudo": round(np.mean([p["with_pseudo"] for p in path]) * 100, 2),
                                  "mean_kept": round(np.mean([p["kept"] for p in path]) * 100, 2),
                                  "min_gain": round(min(p["gain"] for p in path) * 100, 2)},
              "seconds": round(time.perf_counter() - t0, 1),
              "cpu_seconds": round(sum(u.ru_utime + u.ru_stime for u in usage), 1),
              "load_average": [round(v, 2) for v in os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"active_learning_{args.model}{args.tag}"
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=2))
    plot(curves, sizes, args.out / f"{tag}.png")
    print(json.dumps({k: result[k] for k in ("mean_accuracy_at_final", "gain_over_random",
                                             "label_efficient", "seconds", "cpu_seconds",
                                             "load_average")}, indent=2))


_INPUTS: tuple = ()
_ARGS: argparse.Namespace | None = None

if __name__ == "__main__":
    main()
