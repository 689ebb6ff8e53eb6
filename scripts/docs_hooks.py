"""MkDocs hook (mkdocs.yml `hooks:`): the docs site shows benchmarks/RESULTS.md, the one table of
benchmark figures that benchmarks/results.py renders, as the page benchmarks/results.md, read
from where it is rendered rather than copied into docs/."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"


def on_files(files: Files, config) -> Files:
    """Add the rendered results table to the site's files."""
    files.append(File.generated(config, "benchmarks/results.md", abs_src_path=str(RESULTS)))
    return files
