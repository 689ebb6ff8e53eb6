"""The one text-length policy (params.yaml `text:`), applied by ingest, batch predict and serving.

A text longer than `text.max_chars` characters (counted on the text as given, before
normalisation) is either cut to its first `max_chars` characters (`overlong: truncate`) or left
as is and reported, so the caller refuses it (`overlong: refuse`). Training and serving therefore
see the same prefix of a long text, and every caller counts what the policy did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from textloop.core.config import TextConfig
from textloop.core.errors import UserError


@dataclass(frozen=True)
class LimitResult:
    """What the policy did to a list of texts.

    texts: the texts to use (truncated ones cut; refused ones unchanged, positions in `over`);
    over: positions (0-based) of texts longer than max_chars; lengths: their original lengths.
    """

    texts: list[str]
    over: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    policy: str = "truncate"
    max_chars: int = 0

    @property
    def truncated(self) -> list[int]:
        """Positions that were cut (empty under `refuse`)."""
        return self.over if self.policy == "truncate" else []

    @property
    def refused(self) -> list[int]:
        """Positions the caller must refuse (empty under `truncate`)."""
        return self.over if self.policy == "refuse" else []

    def report(self) -> dict[str, int | str]:
        """Counts for reports: policy, max_chars, texts seen, over the limit, truncated, refused."""
        return {"policy": self.policy, "max_chars": self.max_chars, "texts": len(self.texts),
                "overlong": len(self.over), "truncated": len(self.truncated),
                "refused": len(self.refused),
                "longest_overlong_chars": max(self.lengths, default=0)}


def apply_text_limit(texts: Sequence[str], cfg: TextConfig) -> LimitResult:
    """Apply `text.max_chars` / `text.overlong` to texts (non-strings count as length 0).

    Returns a LimitResult; raises nothing: refusing is the caller's answer (422, a marked row,
    a UserError naming file/row/column), so each caller can word it for its user."""
    out, over, lengths = list(texts), [], []
    for i, text in enumerate(out):
        if isinstance(text, str) and len(text) > cfg.max_chars:
            over.append(i)
            lengths.append(len(text))
            if cfg.overlong == "truncate":
                out[i] = text[: cfg.max_chars]
    return LimitResult(out, over, lengths, cfg.overlong, cfg.max_chars)


def overlong_message(length: int, cfg: TextConfig) -> str:
    """The one wording of a refused text, shared by every caller."""
    return (f"text has {length} characters, more than text.max_chars={cfg.max_chars} "
            "(text.overlong: refuse; `truncate` would keep the first "
            f"{cfg.max_chars} characters)")


def limit_frame(df: pd.DataFrame, cfg: TextConfig, text_col: str = "text",
                origin_col: str = "origin") -> tuple[pd.DataFrame, dict[str, Any]]:
    """The policy on a raw frame (ingest): truncated texts replaced and counted.

    Returns (frame, report counts). Raises UserError naming the row's origin (file:row) and
    column for the first overlong text under `refuse`."""
    result = apply_text_limit(df[text_col].tolist(), cfg)
    if result.refused:
        i = result.refused[0]
        origin = df[origin_col].iloc[i] if origin_col in df.columns else f"row {i + 1}"
        raise UserError(f"{origin}, column {text_col!r}: "
                        f"{overlong_message(result.lengths[0], cfg)} "
                        f"({len(result.refused)} such texts)")
    if result.truncated:
        df = df.copy()
        df[text_col] = pd.Series(result.texts, index=df.index, dtype=df[text_col].dtype)
    return df, result.report()
