"""Label benchmarks on IMDb (../shared/data/imdb), in-process with word 1-2-gram tf-idf + NB-LR
(the label-issue baseline of tasks/label/label_issues.py), NOT the whole flow:

  errors  flip 5% of train labels at random; precision/recall of tasks.label.label_issues' detected
          issues vs the flipped set; test accuracy (NB-LR with --C; 16 = the train stage's C)
          trained on noisy vs drop-cleaned vs clean labels, and per --shares (the most confident
          share of the ranked issues) dropping vs relabeling them to the suggested label
  weak    the LFs of examples/imdb_lfs.py on train texts (no gold train labels): per-LF coverage
          and accuracy (against the hidden labels), test accuracy of a model trained on weak labels
  pseudo  1,200 random gold train reviews (3 seeds): test accuracy without and with
          tasks.label.pseudo.pseudo_label rows from the 50k unsup reviews (--use rows: as training
          rows; nb_ratios: only for the NB ratios, tasks.label.pseudo.pseudo_nb_fit), and with the
          guard (tasks.label.pseudo.pseudo_check_matrix, --min-gain-se)

  default the label stage's added cost with default params on the embedded default corpus

Usage: python benchmarks/label.py [errors|weak|pseudo ...] [--imdb DIR] [--seeds 0 1 2]
         [--C 16] [--shares 1.0 0.5] [--use rows|nb_ratios] [--pool-share 0.5] [--tag _x]
       python benchmarks/label.py default
Writes benchmarks/out/label_<part><tag>.json and prints it (with CPU seconds and the load)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _paths import default_imdb

sys.path.insert(0, str(REPO))

from tasks.label.label_issues import find_issues, oof_proba
from tasks.label.pseudo import pseudo_check_matrix, pseudo_label, pseudo_nb_fit
from tasks.label.weak import load_lfs, weak_labels
from tasks.train.baseline import NBLogisticRegression, tfidf_block
from tasks.train.ngrams import WordNgramCounter
from textloop.core.text import normalize_text

CLASSES = ["neg", "pos"]



def load(imdb: Path, name: str) -> pd.DataFrame:
    """One IMDb split with texts cleaned as the clean stage does (HTML stripped)."""
    df = pd.read_parquet(imdb / f"{name}.parquet")
    return df.assign(text=[normalize_text(t, strip_html=True) for t in df["text"]])


class Bench:
    """The tf-idf vocabulary fitted once on train texts (no labels); classifiers fit per variant."""

    def __init__(self, train: pd.DataFrame, test: pd.DataFrame, C: float = 4.0):
        self.C = C
        self.vec = tfidf_block(WordNgramCounter(2, min_df=2))
        self.X = self.vec.fit_transform(train["text"].tolist())
        self.X_test = self.vec.transform(test["text"].tolist())
        self.y_test = test["label"].astype(str).to_numpy()

    def accuracy(self, X, y, seed: int = 0) -> float:
        """Test accuracy of NB-LR fitted on (X, y)."""
        clf = NBLogisticRegression(C=self.C, max_iter=1000, random_state=seed).fit(X, y)
        return float((clf.predict(self.X_test) == self.y_test).mean())

    def fit(self, X, y, seed: int = 0) -> NBLogisticRegression:
        return NBLogisticRegression(C=self.C, max_iter=1000, random_state=seed).fit(X, y)


def errors(train: pd.DataFrame, bench: Bench, seed: int, shares: tuple[float, ...] = (1.0,)
           ) -> dict:
    """5% random flips -> detection precision/recall and noisy/cleaned/clean test accuracy; per
    `shares` (the most confident share of the ranked issues acted on): precision, recall and the
    test accuracy of dropping them or relabeling them to the suggested label (label.issues
    drop | relabel), with the share of the noise loss each recovers."""
    rng = np.random.default_rng(seed)
    truth = train["label"].astype(str).to_numpy()
    noisy = truth.copy()
    flipped = rng.choice(len(noisy), size=len(noisy) // 20, replace=False)
    noisy[flipped] = np.where(noisy[flipped] == "pos", "neg", "pos")
    t0 = time.perf_counter()
    classes, proba = oof_proba(train["text"].tolist(), noisy, 5, 4.0, seed)
    issues = find_issues(noisy, classes, proba)
    detect_s = time.perf_counter() - t0
    flips = set(flipped.tolist())
    acc = {"clean": bench.accuracy(bench.X, truth, seed), "noisy": bench.accuracy(bench.X, noisy, seed)}
    loss = acc["clean"] - acc["noisy"]
    variants = {}
    for share in shares:  # the most confident `share` of the ranked issues
        top = issues.head(round(share * len(issues)))
        pos = top["position"].to_numpy()
        found = set(pos.tolist())
        keep = np.setdiff1d(np.arange(len(noisy)), pos)
        fixed = noisy.copy()
        fixed[pos] = top["suggested_label"].to_numpy()
        v = {"detected": len(found), "precision": len(found & flips) / max(len(found), 1),
             "recall": len(found & flips) / len(flips),
             "drop": bench.accuracy(bench.X[keep], noisy[keep], seed),
             "relabel": bench.accuracy(bench.X, fixed, seed)}
        for policy in ("drop", "relabel"):
            v[f"{policy}_recovered"] = (v[policy] - acc["noisy"]) / loss if loss > 0 else None
        variants[str(share)] = v
        print(seed, share, json.dumps(v), flush=True)
    full = variants[str(shares[0])]
    acc["cleaned"] = full["drop"]
    return {"seed": seed, "flipped": len(flips), "detected": full["detected"],
            "precision": full["precision"], "recall": full["recall"], "test_accuracy": acc,
            "recovered_share": full["drop_recovered"], "variants": variants,
            "detect_seconds": round(detect_s, 1)}


def weak(train: pd.DataFrame, bench: Bench, lfs_path: Path) -> dict:
    """examples/imdb_lfs.py on the train texts: LF table and the weak-label model's test accuracy."""
    lfs = load_lfs(lfs_path)
    gold = train[["text", "label"]]  # the hidden labels: only to score the LFs, never to train
    rows, report = weak_labels(train[["row_id", "text"]], gold, lfs, CLASSES, "label_model", 0)
    pos = train.reset_index(drop=True).reset_index().set_index("row_id").loc[rows["row_id"], "index"]
    truth = train["label"].astype(str).to_numpy()[pos.to_numpy()]
    weak_acc = float((rows["label"].to_numpy() == truth).mean())
    report["weak_label_accuracy"] = weak_acc  # of the rows that got a weak label
    report["test_accuracy_weak_model"] = bench.accuracy(bench.X[pos.to_numpy()], rows["label"].to_numpy())
    report["test_accuracy_gold_model"] = bench.accuracy(bench.X, train["label"].astype(str).to_numpy())
    return report


def pseudo(train: pd.DataFrame, unsup: pd.DataFrame, bench: Bench, seeds: list[int],
           threshold: float, max_share: float, min_gain_se: float = 1.0, use: str = "rows",
           pool_share: float | None = None) -> dict:
    """1,200 random gold reviews per seed: accuracy without / with pseudo-labelled unsup reviews,
    and with the guard (tasks.label.pseudo.pseudo_check_matrix on the benchmark's tf-idf matrices,
    label.pseudo.min_gain_se): the pseudo-label model is kept only when the check says so.
    use=rows: NB-LR (--C) and pseudo rows as training rows (what the label stage feeds train);
    use=nb_ratios: logistic regression (C=10) vs tasks.label.pseudo.pseudo_nb_fit (pseudo rows count
    for the NB ratios only); pool_share caps the pseudo rows at that share of unsup."""
    from sklearn.linear_model import LogisticRegression

    X_unsup = bench.vec.transform(unsup["text"].tolist())
    y = train["label"].astype(str).to_numpy()
    C = bench.C if use == "rows" else 10.0
    runs = []
    for seed in seeds:
        gold = np.random.default_rng(seed).choice(len(train), size=1200, replace=False)
        Xg, yg = bench.X[gold], y[gold]
        base = (bench.fit(Xg, yg, seed) if use == "rows" else LogisticRegression(
            C=C, max_iter=2000, solver="liblinear", random_state=seed).fit(Xg, yg))
        mix = pd.Series(yg).value_counts(normalize=True).to_dict()
        cap = int(pool_share * X_unsup.shape[0]) if pool_share is not None else int(max_share * len(gold))
        rows = pseudo_label(base.predict_proba(X_unsup), np.arange(X_unsup.shape[0]),
                            [str(c) for c in base.classes_], threshold, cap, mix)
        idx, labels = rows["row_id"].to_numpy(dtype=int), rows["label"].to_numpy()
        more = (bench.fit(sp.vstack([Xg, X_unsup[idx]]).tocsr(), np.concatenate([yg, labels]), seed)
                if use == "rows" else pseudo_nb_fit(Xg, yg, X_unsup[idx], labels, C, seed=seed))
        before = float((base.predict(bench.X_test) == bench.y_test).mean())
        raw = float((more.predict(bench.X_test) == bench.y_test).mean())
        check = pseudo_check_matrix(Xg, yg, X_unsup, threshold, max_share, 5, seed, min_gain_se,
                                    use, C, pool_share)
        after = raw if check["helps"] else before  # the guard (label.pseudo.check)
        runs.append({"seed": seed, "gold": 1200, "pseudo_rows": len(rows), "accuracy_gold": before,
                     "accuracy_all_pseudo": raw, "check": check,
                     "accuracy_with_pseudo": after, "gain": after - before})
        print(json.dumps(runs[-1]), flush=True)
    return {"use": use, "threshold": threshold, "max_share": max_share, "pool_share": pool_share,
            "min_gain_se": min_gain_se, "runs": runs,
            "mean_gold": float(np.mean([r["accuracy_gold"] for r in runs])),
            "mean_all_pseudo": float(np.mean([r["accuracy_all_pseudo"] for r in runs])),
            "mean_with_pseudo": float(np.mean([r["accuracy_with_pseudo"] for r in runs])),
            "min_gain": float(min(r["gain"] for r in runs))}


def default_corpus() -> dict:
    """The label stage's extra steps with the default params (label.issues: flag) on the
    embedded default corpus, in-process: seconds of split_trusted + extend, and the report."""
    from tasks.clean.clean_parts import clean_frame
    from tasks.ingest import ingest
    from tasks.label import split_trusted
    from textloop.core.config import Params
    from textloop.pipeline.label_steps import extend

    p = Params()
    raw, _ = ingest(p.ingest, REPO, None)
    clean, _, _ = clean_frame(raw, p.clean.strip_html, p.clean.lowercase, p.clean.min_chars)
    t = time.perf_counter()
    trusted = split_trusted(clean, p.label)
    base_s = time.perf_counter() - t
    out = extend(None, p, clean, *trusted)
    issues = {k: v for k, v in out.report["issues"].items() if k != "top"}
    return {"rows": len(clean), "split_trusted_seconds": round(base_s, 2),
            "extend_seconds": round(time.perf_counter() - t - base_s, 1), "issues": issues}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=["errors", "weak", "pseudo"])
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lfs", type=Path, default=REPO / "examples" / "imdb_lfs.py")
    ap.add_argument("--shares", type=float, nargs="+", default=[1.0],
                    help="errors: the most confident shares of the ranked issues to act on")
    ap.add_argument("--C", type=float, default=4.0, help="C of the NB-LR scored on test "
                    "(detection's out-of-fold baseline keeps tasks.label.label_issues' C=4)")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--max-share", type=float, default=10.0)
    ap.add_argument("--min-gain-se", type=float, default=1.0, help="label.pseudo.min_gain_se")
    ap.add_argument("--use", default="rows", choices=["rows", "nb_ratios"],
                    help="pseudo: pseudo rows as training rows, or only for the NB ratios")
    ap.add_argument("--pool-share", type=float, default=None,
                    help="pseudo: cap the pseudo rows at this share of unsup (else --max-share)")
    ap.add_argument("--tag", default="", help="suffix of the output file")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.parts == ["default"]:
        print(json.dumps(default_corpus(), indent=1))
        return 0
    train, test = load(args.imdb, "train"), load(args.imdb, "test")
    train = train.assign(row_id=[f"t{i}" for i in range(len(train))])
    bench = Bench(train, test, args.C)
    out_dir = REPO / "benchmarks" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        t = time.perf_counter()
        if part == "errors":
            result = {"runs": [errors(train, bench, s, tuple(args.shares)) for s in args.seeds]}
        elif part == "weak":
            result = weak(train, bench, args.lfs)
        else:
            result = pseudo(train, load(args.imdb, "unsup"), bench, args.seeds, args.threshold,
                            args.max_share, args.min_gain_se, args.use, args.pool_share)
        result["seconds"] = round(time.perf_counter() - t, 1)
        (out_dir / f"label_{part}{args.tag}.json").write_text(json.dumps(result, indent=2))
        print(part, json.dumps(result, indent=1), flush=True)
    import os
    import resource

    cpu = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))
    print(f"total {time.perf_counter() - t0:.0f} s wall, {cpu:.0f} s CPU, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
