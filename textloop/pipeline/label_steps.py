"""The label stage's extra steps, after the trusted/queue split (tasks.label.split_trusted):
label-error detection on trusted train rows (tasks.label.label_issues), weak labels from the user's
labeling functions (tasks.label.weak), pseudo-labels from a model (tasks.label.pseudo).

Which rows are train is decided here with the shard stage's own rule (tasks.shard.split_names on
the clean rows): the label stage runs before shard, so it asks the same function instead of
guessing. Hence label-error detection never examines, drops or moves a val/test row, and weak or
pseudo labels are given only to unlabeled rows whose hash already puts them in train (a text's
split never depends on who labeled it; shard also forces machine-labeled rows into train).
Every clean row ends in exactly one of: labeled (label_origin gold|feedback|weak|pseudo), the
queue, or the label quarantine (reason suspected_label_error)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from textloop.core.config import Params
from textloop.core.errors import UserError
from textloop.core.layout import Project

log = logging.getLogger(__name__)


@dataclass
class LabelOutputs:
    """What the label stage writes: labeled rows, the queue, quarantined rows, the suspected
    label errors, the weak labels, and the report (label.json)."""

    labeled: pd.DataFrame
    queue: pd.DataFrame
    quarantined: pd.DataFrame
    issues: pd.DataFrame
    weak: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)


def _rows(clean: pd.DataFrame, ids: Any, labels: Any, origin: str) -> pd.DataFrame:
    """Clean rows `ids` with `labels` given by `origin` (weak/pseudo)."""
    rows = clean.set_index("row_id").loc[list(ids)].reset_index()
    return rows.assign(label=list(labels), label_origin=origin)


def _queue_rows(rows: pd.DataFrame, reason: str, suggested: Any) -> pd.DataFrame:
    """Queue rows (the queue's columns) for rows that already carry a label: it is shown as the
    source label, the model's or the LFs' guess as suggested_label."""
    from tasks.label import QUEUE_COLUMNS

    out = rows.assign(source_label=rows["label"], label="", reason=reason)[QUEUE_COLUMNS]
    return out.assign(suggested_label=list(suggested)).reset_index(drop=True)


def apply_issues(p: Params, out: LabelOutputs, train_ids: set[str]) -> None:
    """label.issues on gold train rows: flag (report only), drop (quarantine with reason
    suspected_label_error), review (to the queue with the given and the suggested label)."""
    from tasks.label.label_issues import ISSUE_REASON, detect, issue_report
    from textloop.core.quarantine import quarantine_rows

    gold = out.labeled[(out.labeled["label_origin"] == "gold")
                       & out.labeled["row_id"].isin(train_ids)].reset_index(drop=True)
    found = detect(gold, p.label.issue_folds, seed=p.train.seed, filter_by=p.label.issue_filter)
    out.report["issues"] = issue_report(found, gold, p.label.issues, p.label.issue_top)
    if found is None:
        return
    out.issues = found.drop(columns="position")
    hit = out.labeled["row_id"].isin(set(found["row_id"]))
    suspects = out.labeled[hit].set_index("row_id").loc[found["row_id"]].reset_index()
    if p.label.issues == "drop":
        out.quarantined = quarantine_rows(suspects, ISSUE_REASON, "label")
    elif p.label.issues == "review":
        out.queue = pd.concat([out.queue, _queue_rows(suspects, ISSUE_REASON,
                                                      found["suggested_label"])], ignore_index=True)
    if p.label.issues in ("drop", "review"):
        out.labeled = out.labeled[~hit].reset_index(drop=True)


def _candidates(out: LabelOutputs, train_ids: set[str]) -> pd.DataFrame:
    """Queued rows weak/pseudo labels may fill: train-split rows not sent for review."""
    q = out.queue
    return q[q["row_id"].isin(train_ids) & (q["reason"] != "suspected_label_error")]


def _move(out: LabelOutputs, clean: pd.DataFrame, ids: Any, labels: Any, origin: str) -> None:
    """Queued rows `ids` become labeled rows of `origin`."""
    out.labeled = pd.concat([out.labeled, _rows(clean, ids, labels, origin)], ignore_index=True)
    out.queue = out.queue[~out.queue["row_id"].isin(set(ids))].reset_index(drop=True)


def _model(project: Project, p: Params) -> Any | None:
    """The model pseudo-labels (and model LFs) use: the champion, or the train stage's folder;
    None when there is none yet."""
    if p.label.pseudo.model == "train":
        from textloop.pipeline.models import load_classifier

        folder = project.path(p.paths.train_model)
        return load_classifier(folder) if folder.is_dir() else None
    from textloop.pipeline.champion_lookup import load_champion

    try:
        return load_champion(project)[0]
    except UserError as exc:
        log.info("label: %s", exc)
        return None


def apply_weak(project: Project, p: Params, out: LabelOutputs, clean: pd.DataFrame,
               train_ids: set[str], get_model: Callable[[], Any]) -> None:
    """Weak labels on candidate rows from label.functions; with label.use_weak they become
    labeled rows (origin weak), else they stay queued with the weak label as suggestion."""
    from tasks.label.weak import load_lfs, weak_labels

    lfs = load_lfs(project.path(p.label.functions))
    for lf in lfs:
        if lf.needs_model:
            lf.model = get_model()  # type: ignore[attr-defined]
    gold = out.labeled[out.labeled["label_origin"] == "gold"]
    classes = sorted(out.labeled["label"].astype(str).unique())
    cand = _candidates(out, train_ids)
    out.weak, out.report["weak"] = weak_labels(cand, gold, lfs, classes, p.label.combine,
                                               p.train.seed)
    out.report["weak"]["used_in_training"] = p.label.use_weak
    if p.label.use_weak:
        _move(out, clean, out.weak["row_id"], out.weak["label"], "weak")
    else:
        guess = dict(zip(out.weak["row_id"], out.weak["label"]))
        out.queue = out.queue.assign(suggested_label=[
            guess.get(r, s) for r, s in zip(out.queue["row_id"], out.queue["suggested_label"])])


def apply_pseudo(p: Params, out: LabelOutputs, clean: pd.DataFrame, train_ids: set[str],
                 model: Any) -> None:
    """label.pseudo: the model labels candidate rows above the threshold, at most max_share x
    the gold train rows, in the gold train class mix (tasks.label.pseudo.pseudo_label); with
    label.pseudo.check they are kept only when self-training with the fast baseline, pseudo rows
    used as label.pseudo.use says, raises cross-validated gold accuracy by more than
    label.pseudo.min_gain_se standard errors (tasks.label.pseudo.pseudo_check)."""
    from tasks.label.pseudo import pseudo_check, pseudo_label

    cfg = p.label.pseudo
    gold = out.labeled[(out.labeled["label_origin"] == "gold") & out.labeled["row_id"].isin(train_ids)]
    mix = gold["label"].astype(str).value_counts(normalize=True).to_dict()
    report: dict[str, Any] = {"model": cfg.model, "threshold": cfg.threshold, "rows": 0}
    out.report["pseudo"] = report
    classes = [str(c) for c in getattr(model, "classes_", [])]
    if model is None or set(classes) != set(mix):
        report["skipped"] = ("no model yet" if model is None else
                             f"model classes {classes} differ from the data's {sorted(mix)}")
        return
    cand = _candidates(out, train_ids)
    texts = cand["text"].astype(str).tolist()
    proba = model.predict_proba(texts) if texts else np.zeros((0, len(classes)))
    rows = pseudo_label(proba, texts, classes, cfg.threshold, int(cfg.max_share * len(gold)),
                        mix, cand["row_id"].tolist())
    if cfg.check and len(rows):
        report["check"] = pseudo_check(gold["text"].astype(str).tolist(), gold["label"].tolist(),
                                       texts, cfg.threshold, cfg.max_share, p.label.issue_folds,
                                       p.train.seed, cfg.min_gain_se, cfg.use)
        if not report["check"]["helps"]:
            report.update(candidates=len(cand), rejected=len(rows), skipped=(
                "the pseudo-labels did not raise cross-validated gold accuracy beyond "
                f"{cfg.min_gain_se} standard errors"))
            return
    _move(out, clean, rows["row_id"], rows["label"], "pseudo")
    report.update(rows=len(rows), candidates=len(cand),
                  labels={str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()})


def final_report(out: LabelOutputs, rows_in: int) -> dict[str, Any]:
    """The label.json counts after every step (tasks.label.label_counts)."""
    from tasks.label import label_counts
    from textloop.core.splits import label_origins

    labeled = out.labeled.assign(label_origin=label_origins(out.labeled))
    return label_counts(out.report, labeled, out.queue, len(out.quarantined), rows_in)


def extend(project: Project, p: Params, clean: pd.DataFrame, trusted: pd.DataFrame,
           queue: pd.DataFrame, report: dict) -> LabelOutputs:
    """Run label-error detection, weak labels and pseudo-labels as params say (each off by its
    own setting) over split_trusted's result; returns every output of the label stage."""
    from tasks.label import whole_frame_steps
    from tasks.shard import split_names
    from textloop.core.quarantine import quarantine_rows
    from textloop.core.splits import label_origins

    steps = whole_frame_steps(p.label)
    train_ids = set(clean.loc[split_names(clean, p.shard) == "train", "row_id"]) if steps else set()
    out = LabelOutputs(trusted.assign(label_origin=label_origins(trusted)),
                       queue.assign(suggested_label=""), quarantine_rows(clean.iloc[:0], "", "label"),
                       pd.DataFrame(columns=["given_label", "suggested_label", "label_quality",
                                             "row_id", "text"]),
                       pd.DataFrame(columns=["row_id", "label", "weak_confidence"]), dict(report))
    if p.label.issues != "ignore":
        apply_issues(p, out, train_ids)
    get_model = functools.cache(lambda: _model(project, p))  # loaded once, only if used
    if p.label.functions is not None:
        apply_weak(project, p, out, clean, train_ids, get_model)
    if p.label.pseudo.enabled:
        apply_pseudo(p, out, clean, train_ids, get_model())
    out.report = final_report(out, len(clean))
    return out
