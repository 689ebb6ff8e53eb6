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
