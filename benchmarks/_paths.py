"""Where the benchmarks find things: the checkout and the IMDb parquet files (read, never copied)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_imdb() -> Path:
    """../shared/data/imdb next to this checkout, or next to a parent folder (a git worktree)."""
    for base in REPO.parents:
        if (base / "shared" / "data" / "imdb").is_dir():
            return base / "shared" / "data" / "imdb"
    return REPO.parent / "shared" / "data" / "imdb"
