"""Copy the repository's pipeline files into the template `textloop init` ships in the package.

Run after editing dvc.yaml, params.yaml or the ignore files: tests/unit/test_config.py fails until
the packaged template equals them (so the two can never drift)."""

from __future__ import annotations

import shutil
from pathlib import Path

from textloop.cli.scaffold import TEMPLATE_DIR, TEMPLATE_FILES

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    for rel, stored in TEMPLATE_FILES.items():
        shutil.copyfile(ROOT / rel, TEMPLATE_DIR / stored)
        print(f"{rel} -> {TEMPLATE_DIR / stored}")
