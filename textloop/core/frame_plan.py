"""The contract between a stage's logic (tasks/) and the executor that runs it
(textloop/pipeline/executor.py): a stage declares, once, the steps of its work over a frame, and
the executor runs them over one frame or over partitions of a file too big for memory.

A plan has up to three steps and a report:
- `scan` (optional), per partition: the row-local work. Returns the rows the stage goes on with
  (`carry`), output rows it already decided (`parts`, e.g. quarantined as empty) and compact
  `facts` about every row (keys, counts: small next to the rows).
- `decide` (optional), once: the global step over the facts of every partition in order (exact
  dedupe, near-duplicate groups, what the whole corpus contains). `frames(i)` reads partition
  i's carried rows again, for a decision that needs a second look at a few of them.
- `apply`, per partition: the carried rows and the decision -> named output parts (and facts).
- `finish`, once: the report from every partition's facts and the compact columns (`compact`) of
  each output; it raises when counts do not add up, before anything is written.

Each output (`outputs`: name -> the part names it is made of, in order) is the concatenation of
its parts over the partitions in order; its rows are the in-memory result's rows in the same
order, so writing them gives the same files. `run_frame` is the one-frame execution (the frame is
the only partition)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Step:
    """What a per-partition step returns: output parts by name, compact facts, and (from scan)
    the rows apply continues with (None: the partition's input rows unchanged)."""

    parts: dict[str, pd.DataFrame] = field(default_factory=dict)
    facts: Any = None
    carry: pd.DataFrame | None = None


@dataclass(frozen=True)
class FramePlan:
    """A stage's logic over a frame, in the steps the executor schedules (module docstring)."""

    apply: Callable[[pd.DataFrame, Any, Any], Step]
    outputs: Mapping[str, tuple[str, ...]]
    compact: Mapping[str, tuple[str, ...]]
    finish: Callable[[Sequence[Any], Sequence[Any], Any, Mapping[str, pd.DataFrame], Any], dict]
    scan: Callable[[pd.DataFrame, Any], Step] | None = None
    decide: Callable[[Sequence[Any], Any, Callable[[int], pd.DataFrame]], Any] | None = None


def joined(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Parts of one output joined in order (the first part's columns when all are empty)."""
    frames = [f for f in frames if f is not None]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)


def run_frame(plan: FramePlan, df: pd.DataFrame, cfg: Any
              ) -> tuple[dict[str, pd.DataFrame], dict]:
    """The plan on one frame (its rows indexed by position): every output frame and the report."""
    df = df.reset_index(drop=True)
    scanned = plan.scan(df, cfg) if plan.scan else Step()
    carry = df if scanned.carry is None else scanned.carry
    decision = plan.decide([scanned.facts], cfg, lambda i: carry) if plan.decide else None
    applied = plan.apply(carry, cfg, decision)
    parts = {**scanned.parts, **applied.parts}
    outputs = {name: joined([parts[p] for p in names]) for name, names in plan.outputs.items()}
    report = plan.finish([scanned.facts], [applied.facts], decision, outputs, cfg)
    return outputs, report


_SETTINGS = {"max_chars"}  # report numbers that are settings, not counts: kept, not summed


def merged_counts(reports: Sequence[dict]) -> dict:
    """Per-partition count reports as one: numbers add, dicts merge key by key, lists of
    examples are joined, `longest*` take the maximum, other values (policy names) are the first
    partition's. One report comes back as it was."""
    out: dict = {}
    for rep in reports:
        for k, v in rep.items():
            if k not in out:
                out[k] = v if not isinstance(v, dict) else merged_counts([v])
            elif (isinstance(v, bool) or not isinstance(v, (int, float, dict, list))
                  or k in _SETTINGS):
                continue
            elif isinstance(v, dict):
                out[k] = merged_counts([out[k], v])
            elif isinstance(v, list):
                out[k] = out[k] + [x for x in v if x not in out[k]]
            elif k.startswith("longest"):
                out[k] = max(out[k], v)
            else:
                out[k] = out[k] + v
    return out
