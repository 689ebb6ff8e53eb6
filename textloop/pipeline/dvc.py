"""DVC helpers: what dvc.lock says about this workspace."""

from __future__ import annotations

from pathlib import Path

import yaml


def dvc_hashes(root: Path) -> dict[str, str]:
    """Output path -> md5 from dvc.lock: the data and model versions of this workspace
    ({} before the first `dvc repro`)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    return {o["path"]: o.get("md5", "") for s in stages.values() for o in s.get("outs", [])}
