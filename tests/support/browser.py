"""What the browser tests share: where their screenshots are kept as test artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"


def screenshot(page: Any, name: str, full: bool = True) -> Path:
    """The viewport as a person first sees it (ARTIFACTS/NAME.png) and, with `full`, the whole
    page (NAME-full.png); returns the first."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if full:
        page.screenshot(path=str(ARTIFACTS / f"{name}-full.png"), full_page=True)
    return ARTIFACTS / f"{name}.png"
