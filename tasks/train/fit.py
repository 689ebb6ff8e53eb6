"""train: the train stage's entry. Fit the CPU baseline (tasks/train/baseline.py) or delegate to
the transformer trainer (tasks/train/transformer/), per params.train.model. Its own module so that
the code which only loads or reuses the baseline's pieces (label, serving) never reaches the
transformer's training loop, and a stage's code fingerprint says so."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from tasks.train.baseline import (
    MetricCallback,
    _save_features_meanwhile,
    build_classifier,
    feature_union,
    fit_features,
    fit_nb_lr,
    labels_of,
    lr_row_mask,
    save_features,
    save_sklearn,
    score_features,
    stack,
    texts_of,
    with_float64_values,
)
from textloop.core.config import Params

log = logging.getLogger(__name__)


def train_model(train: pd.DataFrame, val: pd.DataFrame, params: Params, out_dir: Path,
                on_metric: MetricCallback | None = None, checkpoint_dir: Path | None = None,
                features_dir: Path | None = None) -> dict[str, float]:
    """Fit per params.train.model, write out_dir, and return val metrics + fit time
    (checkpoint_dir: where a transformer run checkpoints and resumes; features_dir: where the
    baseline leaves its fitted features for optimize). Pseudo-labelled rows (label_origin
    pseudo): the baseline uses them as label.pseudo.use says (fit_nb_lr); a transformer has no
    NB ratios and trains on them as ordinary rows whatever `use` says."""
    if params.train.model != "tfidf":
        from tasks.train.transformer.trainer import train_transformer  # lazy: baseline has no torch

        if features_dir is not None:
            save_features(features_dir, None, "")
        return train_transformer(train, val, params, out_dir, on_metric=on_metric,
                                 checkpoint_dir=checkpoint_dir)
    cfg, texts, val_texts = params.train.tfidf, texts_of(train), texts_of(val)
    start = time.perf_counter()
    features = fit_features(cfg, texts, val_texts)
    saving = None if features_dir is None else _save_features_meanwhile(
        features_dir, features, texts, val_texts)
    mask = lr_row_mask(train, params.label.pseudo.use)
    if mask is not None:
        log.info("label.pseudo.use nb_ratios: %d pseudo rows count for the NB ratios only",
                 int((~mask).sum()))
    X = stack(features.train, cfg.char_weight)
    if saving is not None:
        saving.result()  # re-raises a failed write
    features.train = {}  # saved and stacked: free the per-block copies before liblinear's own
    y = labels_of(train)
    if len(np.unique(y)) == 2:  # this fit is X's last use: a binary one scales it in place
        X = with_float64_values(X)
    clf = fit_nb_lr(build_classifier(cfg, params.train.seed), X, y,
                    None if mask is None else np.flatnonzero(mask), overwrite=True)
    del X
    seconds = time.perf_counter() - start
    log.info("baseline fitted on %d rows in %.1fs (val transform included)", len(train), seconds)
    metrics = {**score_features(clf, stack(features.val, cfg.char_weight), labels_of(val)),
               "train_seconds": seconds, "n_train": len(train)}
    pipeline = Pipeline([("features", feature_union(features.blocks, cfg.char_weight)),
                         ("clf", clf)])
    save_sklearn(pipeline, out_dir, params)
    if on_metric is not None:
        for name, value in metrics.items():
            on_metric(name, float(value), None)
    log.info("val accuracy %.4f, macro F1 %.4f", metrics["accuracy"], metrics["f1_macro"])
    return metrics
