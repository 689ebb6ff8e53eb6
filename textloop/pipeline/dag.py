"""DVC's view of the pipeline: the stage list (dvc.yaml is the one declaration), their order
(DVC's own graph) and, per stage, whether it is up to date (DVC's machine-readable status and
run cache, asked in-process through public Repo/Stage/StageCache methods: no subprocess, no
parsing of DVC's English log lines)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

from textloop.core.errors import UserError
from textloop.core.files import read_yaml_file
from textloop.core.layout import Project

DVC_FILE = "dvc.yaml"
LOCK_FILE = "dvc.lock"
RAN, SKIPPED, RESTORED, CHECKED = "ran", "skipped", "restored", "checked"


def stage_names(root: Path) -> list[str]:
    """The stages declared in `root/dvc.yaml`, in file order (cheap: no DVC import).
    Raises UserError when the file is missing, unreadable or has no stages."""
    path = root / DVC_FILE
    stages = read_yaml_file(path).get("stages") or {}
    if not stages:
        raise UserError(f"{path}: no stages declared")
    return list(stages)


def check_pipeline_files(root: Path) -> None:
    """dvc.yaml and dvc.lock are readable (UTF-8, no git merge-conflict markers, valid YAML):
    else one UserError line, before DVC (whose own error is a traceback) reads them."""
    read_yaml_file(root / DVC_FILE)
    read_yaml_file(root / LOCK_FILE, missing_ok=True)


def pipeline_files_problem(root: Path) -> str | None:
    """What check_pipeline_files would refuse (for `textloop status`), or None."""
    try:
        check_pipeline_files(root)
    except UserError as exc:
        return str(exc)
    return None


@contextmanager
def _repo(root: Path, quiet: bool = True) -> Iterator[Any]:
    """An in-process DVC Repo, used from its root as the stages run (DVC names stages and files
    relative to the working folder: from the git-ignored data/ it refused the project's
    dvc.yaml); DVC's own info lines silenced unless asked for (DVC prints through its own
    handlers, so they are not handed to ours too)."""
    from dvc.repo import Repo

    dvc_log = logging.getLogger("dvc")
    level, propagate = dvc_log.level, dvc_log.propagate
    dvc_log.propagate = False
    if quiet:
        dvc_log.setLevel(logging.WARNING)
    try:
        with chdir(root), Repo(str(root)) as repo:
            yield repo
    finally:
        dvc_log.setLevel(level)
        dvc_log.propagate = propagate


def _pipeline(repo: Any) -> list[Any]:
    """The dvc.yaml stages (not `.dvc` files such as the feedback store), upstream first;
    stages that do not depend on each other keep their dvc.yaml order."""
    import networkx as nx
    from dvc.stage import PipelineStage

    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    stages = [s for s in graph if isinstance(s, PipelineStage)]
    position = {s: i for i, s in enumerate(stages)}
    order = nx.lexicographical_topological_sort(graph.reverse(copy=False),
                                                key=lambda s: position.get(s, -1))
    return [s for s in order if s in position]


def pipeline_order(root: Path) -> list[str]:
    """Stage names in DAG order, from DVC's graph of `root/dvc.yaml`."""
    with _repo(root) as repo:
        return [s.name for s in _pipeline(repo)]


def _restorable(repo: Any, stage: Any) -> bool:
    """Whether `dvc repro` would check this out-of-date stage's outputs out of DVC's cache
    instead of running its command, asked through DVC's public StageCache.restore with
    dry=True (it touches no file). New inputs: their hashes are taken in memory and the locked
    output hashes set aside first, so the run cache is looked up by the current inputs (what
    `dvc repro` does before it restores); same inputs (outputs missing or edited): the locked
    outputs must be cached."""
    from dvc.exceptions import DvcException
    from dvc_data.hashfile.hash_info import HashInfo

    try:
        if stage.changed_stage() or stage.changed_deps():
            stage.save_deps()  # in memory: the run-cache key is built from the current inputs
            for out in stage.outs:
                out.hash_info = HashInfo()  # the lock's outputs belong to the old inputs
        repo.stage_cache.restore(stage, dry=True)
        return True
    except DvcException:  # RunCacheNotFoundError, a missing dep: `dvc repro` will decide
        return False


def plan(root: Path) -> dict[str, str]:
    """Per dvc.yaml stage, in DAG order, what `dvc repro --single-item` would do now:
    `checked` (always_changed: runs every time by design), `skipped` (up to date), `restored`
    (outputs come from the cache) or `ran` (the command runs). Valid until a stage runs:
    downstream stages see new inputs only then."""
    with _repo(root) as repo:
        return _plan(repo)


def _plan(repo: Any) -> dict[str, str]:
    """`plan` over an open Repo (DVC's stage checks need the repo lock held: taken here)."""
    from dvc.repo import lock_repo

    with lock_repo(repo):  # entering and leaving it also drops DVC's cached index
        stages = _pipeline(repo)
        changed = repo.status()
        return {stage.name: _verdict(repo, stage, stage.addressing in changed)
                for stage in stages}


def _verdict(repo: Any, stage: Any, changed: bool) -> str:
    """One stage's verdict given whether DVC's status lists it (see `plan`)."""
    if stage.always_changed:
        return CHECKED
    if not changed:
        return SKIPPED
    return RESTORED if _restorable(repo, stage) else RAN


def stage_plan(root: Path, name: str) -> str:
    """`plan`'s verdict for one stage, DVC's status asked of that stage alone: after an
    upstream stage ran, the stages still to walk are judged one at a time, when their turn
    comes, instead of the whole pipeline again after every stage."""
    from dvc.repo import lock_repo

    target = f"{(root / DVC_FILE).resolve()}:{name}"
    with _repo(root) as repo, lock_repo(repo):
        (stage,) = repo.stage.collect(target)
        return _verdict(repo, stage, bool(repo.status(targets=[target])))


def checked_plan(root: Path, on_checked: Callable[[str, float], None]) -> dict[str, str]:
    """Run the always-run checks (`dvc repro --single-item`, their output streamed), then
    `plan` the other stages, all in one in-process DVC Repo: what `dvc repro` itself pays to
    find that nothing changed, the DAG read once under one hold of DVC's repo lock (a check
    rewrites only its own outputs and lock entry; the others' inputs are hashed afresh).
    `on_checked(name, seconds)` after each check. Raises DvcException when a check fails."""
    from dvc.repo import lock_repo

    with _repo(root) as repo, stage_env(), lock_repo(repo):
        for stage in [s for s in _pipeline(repo) if s.always_changed]:
            start = time.perf_counter()
            repo.reproduce(f"{(root / DVC_FILE).resolve()}:{stage.name}", single_item=True)
            on_checked(stage.name, round(time.perf_counter() - start, 2))
        return _plan(repo)


@contextmanager
def stage_env() -> Iterator[None]:
    """The stage commands DVC starts in this process resolve to this environment's CLI (its
    interpreter's folder first on PATH), restored afterwards."""
    saved = os.environ.get("PATH")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{saved or ''}"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved


class UpToDate:
    """DVC's verdict per stage, for a run that goes through the stages in order: the status is
    asked once (lazily: not before the always-run stages, which change its answer), and again
    only after a stage did work."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with _repo(root) as repo:
            stages = _pipeline(repo)
        self.order = [s.name for s in stages]  # upstream first
        self._always = {s.name for s in stages if s.always_changed}
        self._plan: dict[str, str] | None = None
        self._one_by_one = False  # a stage ran or restored: each later one asked alone

    def state(self, name: str) -> str:
        """What running `name` now would do (see `plan`)."""
        if name in self._always:
            return CHECKED
        if self._one_by_one:
            return stage_plan(self.root, name)
        if self._plan is None:
            self._plan = plan(self.root)
        return self._plan[name]

    def did_work(self, state: str = RAN) -> None:
        """A stage did work: downstream verdicts are stale. After the always-run checks the
        whole plan is asked again once (a rerun mostly skips); after a stage ran or restored,
        each later stage is asked alone when its turn comes (its inputs are final by then)."""
        self._plan = None
        self._one_by_one = self._one_by_one or state != CHECKED


def reproduce_here(root: Path, name: str, quiet: bool = True) -> None:
    """`dvc repro --single-item NAME` inside this process: for the cheap always-run checks,
    it saves starting DVC once more on every run. The stage command still runs as its own
    process; its output (normally none) goes to this process's stdout/stderr. Raises
    DvcException (ReproductionError) when the command fails."""
    with _repo(root, quiet=quiet) as repo:  # DVC resolves a bare name against the cwd
        repo.reproduce(f"{(root / DVC_FILE).resolve()}:{name}", single_item=True)


def walk(root: Path, run: Callable[[str, str], str]) -> Iterator[tuple[str, str, float]]:
    """Every stage of root/dvc.yaml, upstream first: `run(name, verdict)` makes it up to date
    (or just reports a skip) and returns its state; yields (name, state, seconds)."""
    check = UpToDate(root)
    for name in check.order:
        start = time.perf_counter()
        state = run(name, check.state(name))
        if state != SKIPPED:
            check.did_work(state)
        yield name, state, round(time.perf_counter() - start, 2)


def outputs_digest(root: Path) -> str | None:
    """sha256 over the output hashes dvc.lock holds for every stage but the always-run checks
    (which rewrite theirs on every run): which data and model a run left, in one value (None:
    no dvc.lock yet)."""
    import hashlib
    import json

    lock = read_yaml_file(root / LOCK_FILE, missing_ok=True).get("stages") or {}
    if not lock:
        return None
    always = {name for name, stage in (read_yaml_file(root / DVC_FILE).get("stages") or {}).items()
              if isinstance(stage, dict) and stage.get("always_changed")}
    outs = sorted((out["path"], out.get("md5", "")) for name, stage in lock.items()
                  if name not in always for out in stage.get("outs", []))
    return hashlib.sha256(json.dumps(outs).encode()).hexdigest()


def record_interpreter(project: Project) -> Path:
    """Write this interpreter's path to params.yaml `paths.python`, the file scripts/stage.sh
    (every dvc.yaml cmd) reads, so `dvc repro` / `dvc exp run` run the stages with textloop's
    own environment even when no venv is activated. Returns the file."""
    path = project.path(project.params().paths.python)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text().strip() != sys.executable:
        path.write_text(sys.executable + "\n")
    return path


def prepare_workspace(project: Project) -> None:
    """The folders dvc.yaml names as deps that no stage writes must exist, or `dvc status` and
    `dvc exp run` stop on a missing dependency: an empty feedback store is still a store, an
    empty tombstone list still a list. `textloop init` and every run call it."""
    p = project.params()
    fb = project.path(p.paths.feedback)
    fb.mkdir(parents=True, exist_ok=True)
    readme = fb / "README.md"
    if not readme.exists():
        readme.write_text("Append-only feedback batches (textloop feedback add). Never edit.\n")
    stones = project.path(p.paths.tombstones)  # erased text hashes (textloop forget)
    stones.mkdir(parents=True, exist_ok=True)
    if not (stones / "README.md").exists():
        (stones / "README.md").write_text("Hashes of erased texts (textloop forget); ingest drops "
                                          "their rows. Never edit.\n")
