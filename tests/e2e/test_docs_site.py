"""The docs site builds with `mkdocs build --strict` (no broken link, no page left out of the
navigation), the README stays a door, and every file the README and docs name exists."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.doc_blocks import REPO, documented_files

# a repository path the docs name in backticks: `tasks/shard/neardup.py`, `tests/e2e/test_gc.py`
NAMED_PATH = re.compile(r"`((?:tasks|textloop|flows|tests|benchmarks|scripts|examples|docs)/"
                        r"[\w./-]*\w)(?:[.:][\w.]+)?`")
NOT_PRODUCT_SPEAK = re.compile(r"\bissues?\s*#?\d+|other engineers|the reviewer", re.IGNORECASE)
CODE_FOLDERS = ("tasks", "textloop", "flows", "tests", "benchmarks", "scripts", "examples")
TEXT_SUFFIXES = {".py", ".md", ".html", ".yaml", ".yml", ".toml", ".txt", ".sh"}


def test_mkdocs_builds_the_site_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    for page in ("index.html", "concepts/shard/index.html", "reference/configuration/index.html",
                 "benchmarks/results/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    results = (tmp_path / "site/benchmarks/results/index.html").read_text()
    assert "benchmarks/results.py" in results  # the rendered table, not a copy kept by hand


def test_readme_is_a_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for needed in ("bash scripts/setup.sh && .venv/bin/textloop run",
                   ".venv/bin/python -m pytest -n 2", "benchmarks/RESULTS.md", "mkdocs serve"):
        assert needed in readme, needed


def test_readme_and_docs_speak_of_the_product_only():
    for path in documented_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found = NOT_PRODUCT_SPEAK.search(line)
            assert not found, f"{path.relative_to(REPO)}:{number}: {found.group(0)!r}"


def test_code_and_tests_speak_of_the_product_only():
    """The rule the README and docs keep holds in every source, test and template file too."""
    found = []
    for folder in CODE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in TEXT_SUFFIXES or not path.is_file():
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if (hit := NOT_PRODUCT_SPEAK.search(line)) and path.name != "test_docs_site.py":
                    found.append(f"{path.relative_to(REPO)}:{number}: {hit.group(0)!r}")
    assert not found, "\n".join(found)


def test_every_file_the_docs_name_exists():
    missing = []
    for path in documented_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for named in NAMED_PATH.findall(line):
                target = REPO / named.rstrip("/")
                if not (target.exists() or target.with_suffix(".py").exists()):
                    missing.append(f"{path.relative_to(REPO)}:{number}: {named}")
    assert not missing, "\n".join(missing)
