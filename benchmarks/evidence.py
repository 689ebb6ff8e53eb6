"""Evidence benchmarks: evidence you can trust.

1. gate simulation (pure numpy): 200 candidate/champion pairs whose true accuracy differs by
   -1.0 .. +1.0 points, on resampled test sets of 1k / 5k / 25k rows; how often each rule
   promotes: the old point rule (candidate >= champion - max_regression) and the paired rule
   (95% CI lower bound of the difference >= -max_regression, non_inferior; > 0, superior).
2. IMDb, in-process (no flow): ingest -> clean -> label -> shard with and without the
   near-duplicate rule; the rows it moves / quarantines; the tf-idf baseline trained on each
   split, test accuracy with its 95% CI.
3. cost: the extra evaluate work (CIs, ECE + reliability plot, slices, behavioural suite) and the
   extra gate work (paired bootstrap + McNemar + slice differences) on the 25k IMDb test set.

Usage: python benchmarks/evidence.py [--imdb DIR] [--skip-imdb] [--pairs 200]
Writes benchmarks/out/evidence.json and prints it."""

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
sys.path.insert(0, str(REPO / "benchmarks"))
from _paths import default_imdb

sys.path.insert(0, str(REPO))


def simulate(pairs: int, sizes: list[int], samples: int, seed: int, max_regression: float,
             champ_acc: float = 0.88, discordant: float = 0.08) -> dict:
    """Promotion rates per rule. Each row of a paired test set falls in one of four cells (both
    right, candidate only, champion only, both wrong) with the pair's true probabilities;
    `discordant` of the rows are judged differently by the two models. Resampling rows for the
    bootstrap of an accuracy difference is resampling these cell counts (multinomial), which is
    what the paired bootstrap in tasks/evaluate/stats.py computes for accuracy."""
    rng = np.random.default_rng(seed)
    deltas = np.linspace(-0.01, 0.01, pairs)
    out: dict = {}
    for n in sizes:
        promoted = {"old_point_rule": [], "paired_non_inferior": [], "paired_superior": []}
        for delta in deltas:
            a_only, b_only = (discordant + delta) / 2, (discordant - delta) / 2
            both = champ_acc - b_only
            probs = np.array([both, a_only, b_only, 1 - both - a_only - b_only])
            counts = rng.multinomial(n, probs)
            diff = (counts[1] - counts[2]) / n  # observed candidate - champion accuracy
            boot = rng.multinomial(n, counts / n, size=samples)
            low = np.percentile((boot[:, 1] - boot[:, 2]) / n, 2.5)
            promoted["old_point_rule"].append(diff >= -max_regression)
            promoted["paired_non_inferior"].append(low >= -max_regression)
            promoted["paired_superior"].append(low > 0)
        out[str(n)] = {rule: _rates(np.array(p), deltas, max_regression)
                       for rule, p in promoted.items()}
    return out


def _rates(promoted: np.ndarray, deltas: np.ndarray, margin: float) -> dict:
    """Promotion rate among truly worse pairs (delta < 0), among pairs worse by more than the
    margin (delta < -margin: a false promotion under any rule), and among truly better ones."""
    worse, much_worse, better = deltas < 0, deltas < -margin, deltas > 0
    return {"promoted_truly_worse": round(float(promoted[worse].mean()), 3),
            "promoted_worse_than_margin": round(float(promoted[much_worse].mean()), 3),
            "promoted_truly_better": round(float(promoted[better].mean()), 3)}


def imdb_frames(imdb: Path, root: Path) -> tuple:
    """The labeled rows of IMDb (train.parquet as data, test.parquet as the explicit test set)
    through the real ingest, clean and label code; returns (labeled, params)."""
    from tasks.clean.clean_parts import clean_frame
    from tasks.ingest import ingest
    from tasks.label import split_trusted
    from textloop.core.config import Params

    p = Params.model_validate({"ingest": {
        "source": str((imdb / "train.parquet").resolve()), "label_col": "label",
        "test_source": str((imdb / "test.parquet").resolve()), "id_col": "path"}})
    (root / "feedback").mkdir(parents=True, exist_ok=True)
    raw, _ = ingest(p.ingest, root, root / "feedback", merge_case=True)
    kept, _, _ = clean_frame(raw, p.clean.strip_html, p.clean.lowercase, p.clean.min_chars)
    labeled, _, _ = split_trusted(kept, p.label)
    return labeled, p


def imdb_run(imdb: Path, work: Path) -> dict:
    """Split with and without the near-duplicate rule, train the baseline on each, score test."""
    from tasks.evaluate.metrics import evaluate
    from tasks.evaluate.stats import bootstrap_ci
    from tasks.shard.shard_parts import assign_splits, split_report
    from tasks.train.fit import train_model
    from textloop.pipeline.models import load_classifier

    labeled, p = imdb_frames(imdb, work)
    result: dict = {"rows_labeled": len(labeled)}
    models = {}
    for name, enabled in (("near_duplicate_rule", True), ("exact_rule_only", False)):
        cfg = p.shard.model_copy(update={"near_duplicates": p.shard.near_duplicates.model_copy(
            update={"enabled": enabled})})
        start = time.perf_counter()
        split, quarantined = assign_splits(labeled, cfg)
        shard_s = time.perf_counter() - start
        report = split_report(split, len(labeled), quarantined)
        train, val = split[split["split"] == "train"], split[split["split"] == "val"]
        test = split[split["split"] == "test"].reset_index(drop=True)
        out = work / name
        start = time.perf_counter()
        train_model(train, val, p, out)
        train_s = time.perf_counter() - start
        model = load_classifier(out)
        metrics, preds = evaluate(model, test)
        ci = bootstrap_ci(preds["actual"], preds["predicted"], 1000, 0, ("accuracy", "f1_macro"))
        models[name] = (model, test, preds)
        result[name] = {
            "shard_seconds": round(shard_s, 1), "train_seconds": round(train_s, 1),
            "rows_train": len(train), "rows_val": len(val), "rows_test": len(test),
            "rows_quarantined": len(quarantined),
            "near_duplicates": report.get("near_duplicates"),
            "test_accuracy": round(metrics["accuracy"], 4),
            "test_accuracy_ci": [round(ci["accuracy"]["low"], 4), round(ci["accuracy"]["high"], 4)],
            "test_f1_macro": round(metrics["f1_macro"], 4)}
    result["cost"] = cost(models["near_duplicate_rule"], models["exact_rule_only"], p, work)
    return result


def default_corpus_split(work: Path) -> dict:
    """The near-duplicate rule on the embedded default corpus (tweets): groups, rows moved, and
    the grouping time, through the real ingest, clean, label and shard code."""
    from tasks.clean.clean_parts import clean_frame
    from tasks.ingest import ingest
    from tasks.label import split_trusted
    from tasks.shard.shard_parts import assign_splits, split_report
    from textloop.core.config import Params

    p = Params()
    (work / "feedback").mkdir(parents=True, exist_ok=True)
    raw, _ = ingest(p.ingest, work, work / "feedback", merge_case=True)
    kept, _, _ = clean_frame(raw, p.clean.strip_html, p.clean.lowercase, p.clean.min_chars)
    labeled, _, _ = split_trusted(kept, p.label)
    start = time.perf_counter()
    split, quarantined = assign_splits(labeled, p.shard)
    seconds = time.perf_counter() - start
    report = split_report(split, len(labeled), quarantined)
    return {"rows": len(labeled), "shard_seconds": round(seconds, 1),
            "near_duplicates": report["near_duplicates"]}


def cost(cand: tuple, champ: tuple, p, work: Path) -> dict:
    """Seconds of the evidence's extra evaluate and gate work on the candidate's test set (the
    champion: the other model, scored on the same rows)."""
    import matplotlib.pyplot  # noqa: F401  evaluate has imported it already (confusion matrix)

    from tasks.deploy import ChampionView, Evidence, decide
    from tasks.evaluate.behaviour import load_suite, run_suite
    from tasks.evaluate.metrics import add_calibration, add_confidence_intervals, plot_reliability
    from tasks.evaluate.slices import slice_keys, slice_metrics

    model, test, preds = cand
    e = p.evaluate
    t = {}
    start = time.perf_counter()
    m = add_confidence_intervals({}, preds, e.bootstrap_samples, e.bootstrap_seed)
    t["bootstrap_ci_4_metrics"] = time.perf_counter() - start
    start = time.perf_counter()
    m = add_calibration(m, preds, e.calibration_bins)
    plot_reliability(m["calibration"], m["ece"], work / "reliability.png")
    t["ece_and_reliability_png"] = time.perf_counter() - start
    start = time.perf_counter()
    keys, _ = slice_keys(test, e.slices)
    slice_metrics(preds["actual"], preds["predicted"], keys, e.bootstrap_samples,
                  e.bootstrap_seed, e.slices.min_rows)
    t["slices_with_cis"] = time.perf_counter() - start
    start = time.perf_counter()
    behaviour = run_suite(load_suite(REPO / "tests_behaviour.yaml"), model)
    t["behaviour_suite"] = time.perf_counter() - start
    champ_pred = champ[0].predict_proba(test["text"].tolist()).argmax(axis=1)
    champ_labels = [str(champ[0].classes_[i]) for i in champ_pred]
    view = ChampionView("1", sorted(set(test["label"])), np.ones(len(test), dtype=bool),
                        champ_labels)
    start = time.perf_counter()
    d = decide(test["label"].tolist(), preds["predicted"].tolist(), view.labels, view,
               p.deploy, "accuracy", Evidence(e.bootstrap_samples, e.bootstrap_seed, keys,
                                               e.slices.min_rows, behaviour["pass_rate"]))
    t["gate_paired_bootstrap_mcnemar_slices"] = time.perf_counter() - start
    start = time.perf_counter()
    decide(test["label"].tolist(), preds["predicted"].tolist(), view.labels, view, p.deploy,
           "accuracy")
    t["gate_without_evidence"] = time.perf_counter() - start
    extra = sum(v for k, v in t.items() if k != "gate_without_evidence") - t[
        "gate_without_evidence"]
    return {"rows": len(test), "bootstrap_samples": e.bootstrap_samples,
            **{k: round(v, 2) for k, v in t.items()}, "extra_seconds_total": round(extra, 2),
            "gate_reason": d.reason, "behaviour_pass_rate": behaviour["pass_rate"],
            "behaviour": {k: v.get("pass_rate") for k, v in behaviour["tests"].items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imdb", type=Path, default=default_imdb())
    ap.add_argument("--skip-imdb", action="store_true")
    ap.add_argument("--pairs", type=int, default=200)
    args = ap.parse_args()
    result: dict = {"load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    start = time.perf_counter()
    result["simulation"] = simulate(args.pairs, [1000, 5000, 25000], 1000, 0, 0.005)
    result["simulation_seconds"] = round(time.perf_counter() - start, 1)
    with tempfile.TemporaryDirectory() as tmp:
        result["default_corpus"] = default_corpus_split(Path(tmp))
    if not args.skip_imdb:
        with tempfile.TemporaryDirectory() as tmp:
            result["imdb"] = imdb_run(args.imdb, Path(tmp))
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = REPO / "benchmarks" / "out" / "evidence.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
