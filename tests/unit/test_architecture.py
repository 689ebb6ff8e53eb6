"""The floor plan: the layer and no-loop contracts in pyproject.toml hold (import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    """`lint-imports` keeps every contract: nothing imports upward, no sibling import loops."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_fixtures_do_not_ship() -> None:
    """Test helpers live under tests/, not inside the installed packages."""
    shipped = [p for pkg in ("textloop", "tasks", "flows") for p in (ROOT / pkg).rglob("*.py")]
    assert not [p for p in shipped if p.stem in {"testing", "stub_flows", "fixtures"}]


def test_module_names_are_unique_across_layers() -> None:
    """A module's file name says what it does and names one module: no two modules of textloop/,
    tasks/ and flows/ share a file name (package __init__ files and migrations aside)."""
    seen: dict[str, list[str]] = {}
    for pkg in ("textloop", "tasks", "flows"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name != "__init__.py":
                seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
