"""DVC helpers: what dvc.lock says about this workspace; repairing DVC's lock state after a
killed run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from textloop.core.files import read_yaml_file

log = logging.getLogger(__name__)
RWLOCK = Path(".dvc") / "tmp" / "rwlock"  # DVC's read/write lock table of stage paths


def dvc_hashes(root: Path) -> dict[str, str]:
    """Output path -> md5 from dvc.lock: the data and model versions of this workspace
    ({} before the first `dvc repro`)."""
    stages = read_yaml_file(root / "dvc.lock", missing_ok=True).get("stages") or {}
    return {o["path"]: o.get("md5", "") for s in stages.values() for o in s.get("outs", [])}


def repair_rwlock(root: Path) -> bool:
    """Remove DVC's rwlock table when it is not valid JSON: a run killed while DVC rewrote it
    (DVC truncates, then writes) leaves a file every later `dvc repro` refuses ("JSON structure
    is corrupted"). Entries of dead processes in a valid table DVC clears itself. Call only while
    holding the workspace lock (no other textloop run uses DVC here). Returns True if removed."""
    path = Path(root) / RWLOCK
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return False
    except FileNotFoundError:
        return False
    except (ValueError, UnicodeDecodeError):
        path.unlink()
        log.warning("%s was corrupted by the killed run; removed (DVC rebuilds it)", path)
        return True
