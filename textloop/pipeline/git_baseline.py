"""What git must hold after a run so `dvc exp show` has a baseline to compare experiments with:
dvc.lock, params.yaml, the .gitignore files DVC maintains, and every output DVC does not cache
(metrics, plots, code fingerprints): DVC reads those from the commit, so until they are committed
the baseline row shows `!` and `--only-changed` has nothing to compare."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

ALWAYS = ("dvc.lock", "params.yaml")
COMMIT_MESSAGE = "textloop: baseline run"


def uncached_outputs(root: Path) -> list[str]:
    """The outputs of dvc.yaml declared `cache: false` (git keeps them, not DVC's cache)."""
    stages = (yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}).get(
        "stages", {})
    out: list[str] = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []) or []:
                if isinstance(entry, dict):
                    out += [path for path, opts in entry.items()
                            if isinstance(opts, dict) and opts.get("cache") is False]
    return sorted(set(out))


def _changed(root: Path, pathspecs: list[str]) -> list[str]:
    """The paths under `pathspecs` git sees as new or modified (empty outside git)."""
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--",
                           *pathspecs], cwd=root, capture_output=True, text=True, check=False)
    return [line[3:].strip().strip('"') for line in proc.stdout.splitlines() if line.strip()]


def uncommitted(root: Path) -> list[str]:
    """Which of the baseline's paths (ALWAYS, the uncached outputs, DVC's .gitignore files)
    have changes git does not hold yet, as the pathspecs to add."""
    specs = [*ALWAYS, *uncached_outputs(root)]
    changed = _changed(root, [*specs, ":(glob)**/.gitignore", ".gitignore"])
    wanted = [s for s in specs if any(c == s or c.startswith(s.rstrip("/") + "/")
                                      for c in changed)]
    ignores = sorted(c for c in changed if Path(c).name == ".gitignore")
    return wanted + ignores


def commit_hint(root: Path) -> dict[str, Any] | None:
    """The exact git command that commits the baseline, or None when nothing is left to commit
    (or this is not a git checkout)."""
    paths = uncommitted(root)
    if not paths:
        return None
    command = (f"git add {' '.join(shlex.quote(p) for p in paths)} && "
               f"git commit -m {shlex.quote(COMMIT_MESSAGE)}")
    return {"paths": paths, "command": command}
