"""The model card: one Markdown document per registered version (MLflow run artifact
`model_card/model_card.md`, rendered by the dashboard). Built from what deploy already has: the
lineage record (sources, hashes, params, metrics), the split and train reports, the gate
decision. Sections evaluate may leave out (bootstrap CIs as `ci` entries of its full report
metrics/evaluate.json, `slices`, behavioural results, a paired-gate decision) are read when
present and said to be absent otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textloop.core.layout import Project

ARTIFACT = "model_card/model_card.md"
HEADLINE = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


def _json(path: Path) -> dict[str, Any]:
    """A JSON report or {} (a card never fails on a missing optional report)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def gather(project: Project, record: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """The card's inputs from the workspace at deploy time (after evaluate, before deploy.json
    is rewritten): reports by their params.yaml paths, plus the lineage record and decision."""
    p = project.params().paths
    metrics = _json(project.path(p.eval_report))
    behaviour = metrics.get("behaviour") or _json(project.path("metrics/behaviour.json"))
    return {"record": record, "decision": decision, "metrics": metrics,
            "split": _json(project.path(p.split_report)), "train": _json(project.path(p.train_metrics)),
            "optimize": _json(project.path(p.optimize_report)), "behaviour": behaviour}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _ci(ci: Any, key: str) -> str:
    """'[lo, hi]' of a metric's bootstrap CI in any of the shapes an evaluate may write
    ({key: [lo, hi]} or {key: {"low"/"lo": .., "high"/"hi": ..}}), else '–'."""
    entry = ci.get(key) if isinstance(ci, dict) else None
    if isinstance(entry, (list, tuple)) and len(entry) == 2:
        return f"[{_fmt(float(entry[0]))}, {_fmt(float(entry[1]))}]"
    if isinstance(entry, dict):
        lo, hi = entry.get("low", entry.get("lo")), entry.get("high", entry.get("hi"))
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            return f"[{_fmt(float(lo))}, {_fmt(float(hi))}]"
    return "–"


def _data(inputs: dict[str, Any]) -> list[str]:
    """Sources, sizes, label mix, hashes."""
    rec, split = inputs["record"], inputs["split"]
    out = ["## Data", "", f"- source: `{rec.get('params', {}).get('ingest', {}).get('source')}`",
           f"- test source: `{rec.get('params', {}).get('ingest', {}).get('test_source')}`"]
    for name, fp in sorted(rec.get("sources", {}).items()):
        out.append(f"- fingerprint `{name}`: `{json.dumps(fp, sort_keys=True, default=str)[:160]}`")
    out += ["", "| split | rows | label mix |", "|---|---|---|"]
    for name, s in sorted(split.get("splits", {}).items()):
        mix = ", ".join(f"{k} {v:.1%}" for k, v in sorted(s.get("class_fraction", {}).items()))
        out.append(f"| {name} | {s.get('rows', '–')} | {mix or '–'} |")
    out += ["", "| output | hash (dvc.lock) |", "|---|---|"]
    for stage in rec.get("dvc_lock", {}).values():
        out += [f"| `{path}` | `{h}` |" for path, h in sorted(stage.get("outs", {}).items())]
    return out


def _training(inputs: dict[str, Any]) -> list[str]:
    """Model kind, its params, the budget used."""
    params, train = inputs["record"].get("params", {}), inputs["train"]
    kind = params.get("train", {}).get("model", "?")
    section = params.get("train", {}).get("transformer" if kind != "tfidf" else "tfidf", {})
    out = ["## Training", "", f"- model: `{kind}`",
           f"- params: `{json.dumps(section, sort_keys=True, default=str)[:600]}`"]
    budget = {k: v for k, v in train.items() if k not in ("accuracy", "f1_macro")}
    if budget:
        out.append(f"- budget used: `{json.dumps(budget, sort_keys=True, default=str)[:600]}`")
    chosen = inputs["optimize"].get("chosen")
    if chosen:
        out.append(f"- optimize kept: `{chosen}`")
    return out


def _metrics(inputs: dict[str, Any]) -> list[str]:
    """Headline test metrics with their 95% CIs when evaluate wrote them; per-slice table."""
    m = inputs["metrics"]
    ci = m.get("ci", {})
    out = ["## Test metrics", "", f"{m.get('n_test', '?')} test rows.", "",
           "| metric | value | 95% CI |", "|---|---|---|"]
    out += [f"| {k} | {_fmt(m[k])} | {_ci(ci, k)} |" for k in HEADLINE if k in m]
    if not ci:
        out += ["", "No confidence intervals were computed for this version."]
    slices = m.get("slices")
    out += ["", "## Slices", ""]
    if isinstance(slices, dict) and slices:
        out += ["| slice | rows | accuracy | 95% CI |", "|---|---|---|---|"]
        for dim, values in sorted(slices.items()):
            rows = values if isinstance(values, dict) else {}
            for value, s in sorted((v, r) for v, r in rows.items() if isinstance(r, dict)):
                out.append(f"| {dim}={value} | {s.get('rows', '–')} | "
                           f"{_fmt(s.get('accuracy', '–'))} | {_ci(s.get('ci'), 'accuracy')} |")
    else:
        out.append("No slice has enough test rows to show.")
    out += [f"Not sliced by {s['column']}: {s['reason']}." for s in m.get("slices_skipped") or []
            if isinstance(s, dict)]
    return out


def _behaviour(inputs: dict[str, Any]) -> list[str]:
    """Behavioural test pass rates when evaluate ran a suite."""
    b = inputs["behaviour"]
    out = ["## Behavioural tests", ""]
    tests = b.get("tests") if isinstance(b, dict) else None
    if not tests:
        return out + ["No behavioural suite was run."]
    out += ["| test | pass rate |", "|---|---|"]
    items = tests.items() if isinstance(tests, dict) else ((t.get("name"), t) for t in tests)
    for name, t in items:
        rate = t.get("pass_rate") if isinstance(t, dict) else t
        out.append(f"| {name} | {_fmt(rate)} |")
    return out


SMALL_TEST_ROWS = 1000  # below this, 1/sqrt(n) (the noise of a difference) is over 3 points


def small_test_note(n_test: Any) -> str | None:
    """The one rule for a test set too small to trust a small difference (the card's
    limitations and the dashboard's first screen both say it): None when n_test is not a row
    count or is at least SMALL_TEST_ROWS."""
    if not isinstance(n_test, int) or n_test >= SMALL_TEST_ROWS:
        return None
    return (f"Small test set ({n_test} rows): a difference of about "
            f"{1 / max(n_test, 1) ** 0.5:.1%} accuracy is within noise.")


def limitations(inputs: dict[str, Any]) -> list[str]:
    """Known limitations read off the numbers (small test set, rare classes, no champion
    comparison, excluded rows, a modified code tree), never boilerplate."""
    m, d, rec = inputs["metrics"], inputs["decision"], inputs["record"]
    out = []
    note = small_test_note(m.get("n_test"))
    if note:
        out.append(note)
    for name, s in sorted(inputs["split"].get("splits", {}).get("train", {})
                          .get("class_fraction", {}).items()):
        if s < rec.get("params", {}).get("shard", {}).get("min_class_share", 0.05):
            out.append(f"Class `{name}` is {s:.1%} of training rows (imbalanced).")
    if d.get("champion_version") and d.get("champion_score") is None:
        out.append(f"Not compared with champion v{d['champion_version']}: "
                   f"{d.get('not_comparable_why') or 'not comparable'}.")
    if d.get("n_excluded"):
        out.append(f"{d['n_excluded']} test rows were excluded from the champion comparison "
                   "(one of the models trained on them).")
    if rec.get("git_dirty"):
        out.append("Trained from a working tree with uncommitted code changes: "
                   "`textloop reproduce` cannot rebuild it exactly.")
    if m.get("labels_unseen_in_training"):
        out.append(f"Test labels never seen in training: {m['labels_unseen_in_training']}.")
    return out or ["None detected from the recorded numbers."]


def render(inputs: dict[str, Any]) -> str:
    """The whole card as Markdown."""
    rec, d = inputs["record"], inputs["decision"]
    head = [f"# Model card: {rec.get('model_name')} v{rec.get('version')}", "",
            (f"- MLflow run `{rec.get('mlflow_run_id')}`, git commit `{rec.get('git_commit')}`, "
            f"Prefect flow run `{rec.get('prefect_flow_run_id')}`"), ""]
    gate = ["## Gate decision", "", f"- outcome: **{d.get('outcome', '?')}**",
            f"- {d.get('reason', 'n/a')}"]
    for key in ("paired", "ci", "p_value", "rule"):  # a paired gate's fields, when present
        if key in d:
            gate.append(f"- {key}: `{json.dumps(d[key], default=str)[:300]}`")
    parts = [head, _data(inputs), [""], _training(inputs), [""], _metrics(inputs), [""],
             _behaviour(inputs), [""], gate, ["", "## Known limitations", ""],
             [f"- {x}" for x in limitations(inputs)]]
    return "\n".join(line for part in parts for line in part) + "\n"


def to_html(markdown: str) -> str:
    """The card as HTML for the dashboard (markdown-it, raw HTML in the card not rendered)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
