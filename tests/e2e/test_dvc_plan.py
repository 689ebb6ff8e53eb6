"""What `textloop run` says each stage will do (ran / restored / skipped) is DVC's own verdict,
asked through DVC's public API: outputs come back from the run cache for inputs seen before,
from the cache for missing outputs, and a command runs only for new inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from textloop.pipeline.dag import RAN, RESTORED, SKIPPED, UpToDate, plan, stage_plan

DVC = [sys.executable, "-m", "dvc"]


def _sh(root: Path, *args: str) -> None:
    subprocess.run(list(args), cwd=root, check=True, capture_output=True)


def _repo(root: Path) -> Path:
    root.mkdir()
    _sh(root, "git", "init", "-q")
    _sh(root, *DVC, "init", "-q")
    (root / "a.txt").write_text("one\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp a.txt b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n")
    _sh(root, *DVC, "repro", "-q")
    return root


def test_plan_says_skipped_restored_or_ran_as_dvc_repro_would(tmp_path, monkeypatch):
    root = _repo(tmp_path / "r")
    monkeypatch.chdir(root)  # as `textloop run` works: from the project folder
    assert plan(root) == {"copy": SKIPPED}
    (root / "b.txt").unlink()  # same inputs, output gone: the cache has it
    assert plan(root) == {"copy": RESTORED}
    _sh(root, *DVC, "checkout", "-q")
    (root / "a.txt").write_text("two\n")  # inputs never seen: the command runs
    assert plan(root) == {"copy": RAN}
    _sh(root, *DVC, "repro", "-q")
    (root / "a.txt").write_text("one\n")  # inputs seen before: the run cache answers
    assert plan(root) == {"copy": RESTORED}
    _sh(root, *DVC, "repro", "-q")
    assert (root / "b.txt").read_text() == "one\n" and plan(root) == {"copy": SKIPPED}


def test_one_stage_asked_alone_gets_the_verdict_of_the_whole_plan(tmp_path, monkeypatch):
    """After a stage ran, `textloop run` asks each later stage alone (stage_plan): the same
    verdict as the whole pipeline's plan, in every case the plan tells apart."""
    root = _repo(tmp_path / "r")
    monkeypatch.chdir(root)
    (root / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp a.txt b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n"
        "  again:\n    cmd: cp b.txt c.txt\n    deps: [b.txt]\n    outs: [c.txt]\n")
    both = lambda: {name: stage_plan(root, name) for name in ("copy", "again")}
    assert both() == plan(root) == {"copy": SKIPPED, "again": RAN}
    _sh(root, *DVC, "repro", "-q")
    (root / "c.txt").unlink()
    assert both() == plan(root) == {"copy": SKIPPED, "again": RESTORED}
    (root / "a.txt").write_text("two\n")
    assert both() == plan(root) == {"copy": RAN, "again": RESTORED}  # c.txt still gone
    check = UpToDate(root)
    assert check.state("copy") == RAN
    _sh(root, *DVC, "repro", "-q", "--single-item", "copy")
    check.did_work(RAN)  # copy ran: b.txt is new, so `again` is asked alone, afresh
    assert check.state("again") == RAN == plan(root)["again"]


@pytest.mark.parametrize("report, verdict", [
    ("    outs:\n      - b.txt\n      - report.json:\n          cache: false\n", RAN),
    ("    outs:\n      - b.txt\n      - report.json\n", RESTORED),
    ("    outs: [b.txt]\n    metrics:\n      - report.json:\n          cache: false\n", RESTORED),
])
def test_an_uncached_out_that_is_no_metric_keeps_a_stage_out_of_the_run_cache(
        tmp_path, monkeypatch, report, verdict):
    """DVC saves a stage in its run cache only when every uncached out is a metric or a plot
    (those it copies into the cache itself): else `dvc repro` reruns a stage whose cached
    output was deleted, and the plan says so."""
    root = tmp_path / "r"
    root.mkdir()
    _sh(root, "git", "init", "-q")
    _sh(root, *DVC, "init", "-q")
    (root / "a.txt").write_text("one\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp a.txt b.txt && cat a.txt a.txt > report.json\n"
        f"    deps: [a.txt]\n{report}")
    _sh(root, *DVC, "repro", "-q")
    monkeypatch.chdir(root)
    (root / "b.txt").unlink()
    assert plan(root) == {"copy": verdict}
    _sh(root, *DVC, "repro", "-q")
    assert (root / "b.txt").read_text() == "one\n" and plan(root) == {"copy": SKIPPED}
