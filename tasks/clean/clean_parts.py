"""clean's global rules for the partitioned path (textloop/pipeline/partitions/partition_files.py explains the design): the
rows every partition contributes reduced to compact keys, and clean.py's own duplicate, conflict
and feedback-override functions run on them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from textloop.core.text import text_keys


def compact_rows(df: pd.DataFrame) -> pd.DataFrame:
    """What the global clean rules read of each row: position (as row_id: ids are unique),
    role, source, label, and the text's key."""
    return pd.DataFrame({"row_id": df.index.to_numpy(dtype=np.int64),
                         "role": df["role"].astype(object).to_numpy(),
                         "source": df["source"].astype(object).to_numpy(),
                         "label": df["label"].astype(object).to_numpy(),
                         "text": text_keys(df["text"].tolist())})


def clean_decisions(compact: pd.DataFrame) -> tuple[dict[str, np.ndarray], int]:
    """clean.py's global rules on the compact rows of every partition (after the per-row
    empty/short step): the positions each rule quarantines, in the order the in-memory path
    lists them (superseded, conflicts, duplicates: labeled copies first), and how many test rows
    repeat a text (kept: the test set is scored as given)."""
    from tasks.clean import _apply_feedback_overrides, _collapse_duplicates, _quarantine_conflicts

    compact = compact.set_index(pd.RangeIndex(len(compact)))
    fixed = (compact["role"] == "test").to_numpy()
    data, test = compact[~fixed], compact[fixed]
    data, superseded = _apply_feedback_overrides(data)
    data, conflicts = _quarantine_conflicts(data)
    data, dups = _collapse_duplicates(data)
    labeled = dups["label"].notna().to_numpy()
    out = {"superseded_by_feedback": superseded["row_id"].to_numpy(dtype=np.int64),
           "conflicting_labels": conflicts["row_id"].to_numpy(dtype=np.int64),
           "duplicate_text/labeled": dups["row_id"].to_numpy(dtype=np.int64)[labeled],
           "duplicate_text/unlabeled": dups["row_id"].to_numpy(dtype=np.int64)[~labeled]}
    return out, int(test["text"].duplicated().sum())


def clean_rows(df: pd.DataFrame, removed: dict[str, np.ndarray]
               ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One normalised partition split by the global decisions: the kept rows (in order) and
    the quarantined ones per decision (clean.quarantine_rows, reason = the decision's name
    before '/')."""
    from tasks.clean import quarantine_rows

    out, gone = {}, np.zeros(len(df), dtype=bool)
    pos = df.index.to_numpy()
    for name, positions in removed.items():
        hit = np.isin(pos, positions)
        gone |= hit
        out[name] = quarantine_rows(df[hit], name.split("/")[0], "clean")
    return df[~gone], out

