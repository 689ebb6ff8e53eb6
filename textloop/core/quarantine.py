"""A quarantined row: the row as it was, with why (`reason`) and where (`stage`) it was set
aside. The one rule every stage that removes rows applies, so nothing is dropped silently."""

from __future__ import annotations

import pandas as pd


def quarantine_rows(df: pd.DataFrame, reason: str, stage: str) -> pd.DataFrame:
    """Tag removed rows with why and where, so nothing is dropped silently."""
    out = df.copy()
    out["reason"] = reason
    out["stage"] = stage
    return out
