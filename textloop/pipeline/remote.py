"""The team profile's DVC remote: nothing a run needs lives only on the machine that made it.

`backend.dvc_remote` (null: s3://textloop/dvc on the local development store) is the project's
default DVC remote `team`, written to `.dvc/config.local` (per checkout, outside git; the URL and
endpoint are not secrets, the keys come from the environment as MLflow's do). A lifecycle run
on a worker first pulls the cached outputs its dvc.lock names that this checkout lacks; a
successful run pushes every cached output after deploy. `textloop pull` (another checkout)
takes the champion's dvc.lock and params.yaml from its lineage record and pulls their data.
All through DVC's Python API, in process.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from textloop.core.backend import LOCAL_HOST, endpoints
from textloop.core.errors import UserError
from textloop.core.layout import Project

log = logging.getLogger(__name__)
REMOTE = "team"  # the DVC remote's name in .dvc/config.local


def enabled(project: Project) -> bool:
    """Whether runs of this project sync with the DVC remote (the team profile)."""
    return project.params().backend.profile == "team"


def s3_keys(endpoint_url: str | None) -> dict[str, str]:
    """Dummy keys for the local development store when the environment has none (as MLflow's
    server gets them); real keys only ever come from the environment or the secrets file."""
    if not endpoint_url or not endpoint_url.startswith(f"http://{LOCAL_HOST}"):
        return {}
    return {k: os.environ.get(k, "testing") for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def configure_remote(project: Project) -> dict[str, str]:
    """Make `team` (backend.dvc_remote, endpoint backend.s3_endpoint_url) the default remote of
    this checkout in .dvc/config.local; sets missing development keys in os.environ. Returns
    {"url", "endpointurl"}. Idempotent."""
    from dvc.repo import Repo

    ep = endpoints(project.params().backend, project.layout.root)
    os.environ.update({k: v for k, v in s3_keys(ep.s3_endpoint_url).items()
                       if k not in os.environ})
    wanted = {"url": ep.dvc_remote, **({"endpointurl": ep.s3_endpoint_url}
                                       if ep.s3_endpoint_url else {})}
    with Repo(str(project.root)) as repo:
        current = repo.config["remote"].get(REMOTE, {})
        if {k: current.get(k) for k in wanted} != wanted or repo.config["core"].get(
                "remote") != REMOTE:
            with repo.config.edit("local") as conf:
                conf["remote"][REMOTE] = wanted
                conf["core"]["remote"] = REMOTE
    return wanted


def cached_outs(root: Path) -> dict[str, str]:
    """Path -> recorded hash of every output DVC caches: stage outputs in dvc.lock and the
    `dvc add`-ed stores (.dvc files); outputs with `cache: false` (fingerprints, metrics) are
    rebuilt or live in git, never pushed. Outputs with no recorded hash yet are left out."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {str(o.def_path): str(o.hash_info.value) for o in repo.index.outs
                if o.use_cache and o.hash_info and o.hash_info.value}


def pull_missing(project: Project) -> dict[str, Any]:
    """Before a run: fetch + check out the cached outputs of this checkout's dvc.lock that are
    not in the workspace (a worker's fresh clone). Returns {"paths", "seconds", "fetched"}.
    Raises UserError naming the missing objects when the remote lacks them."""
    from dvc.exceptions import CheckoutError, DvcException
    from dvc.repo import Repo

    configure_remote(project)
    missing = sorted(p for p in cached_outs(project.root) if not (project.root / p).exists())
    if not missing:
        return {"paths": [], "seconds": 0.0, "fetched": 0}
    start = time.perf_counter()
    try:
        with Repo(str(project.root)) as repo:
            result = repo.pull(targets=missing, remote=REMOTE)
    except CheckoutError as exc:
        raise UserError(f"dvc remote {REMOTE!r} lacks data this run needs "
                        f"({', '.join(missing)}): {exc}; push it from the machine that made "
                        f"it (a successful team run pushes its outputs)") from None
    except DvcException as exc:
        raise UserError(f"dvc pull from remote {REMOTE!r} failed: {exc}") from None
    seconds = round(time.perf_counter() - start, 2)
    log.info("pulled %d missing outputs from the DVC remote in %.1f s", len(missing), seconds)
    return {"paths": missing, "seconds": seconds,
            "fetched": int(result.get("stats", {}).get("fetched", 0))}


def push(project: Project) -> dict[str, Any]:
    """After a successful run: push every cached output (dvc.lock and the .dvc stores) to the
    team remote. Returns {"pushed": objects uploaded, "seconds", "bytes": their size here}."""
    from dvc.repo import Repo

    configure_remote(project)
    start = time.perf_counter()
    with Repo(str(project.root)) as repo:
        pushed = repo.push(remote=REMOTE)
    size = sum(_size(project.root / p) for p in cached_outs(project.root))
    seconds = round(time.perf_counter() - start, 2)
    log.info("pushed %d objects to the DVC remote in %.1f s", pushed, seconds)
    return {"pushed": int(pushed), "seconds": seconds, "bytes": size}


def _size(path: Path) -> int:
    """Bytes of a file or of every file under a folder (0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def checkout_version(project: Project, record: dict[str, Any]) -> dict[str, Any]:
    """`textloop pull`: make this checkout hold a registered version's data: its lineage
    record's dvc.lock and params.yaml are written here, then every cached output is pulled.
    Returns {"version", "paths", "seconds", "fetched"}."""
    from textloop.pipeline.dag import record_interpreter

    if not record.get("dvc_lock_text"):
        raise UserError("the version has no recorded dvc.lock (registered before lineage "
                        "records); run the lifecycle once on the team profile")
    (project.root / "dvc.lock").write_text(record["dvc_lock_text"], encoding="utf-8")
    if record.get("params_yaml"):
        project.params_path.write_text(record["params_yaml"], encoding="utf-8")
        record_interpreter(project)  # this checkout's interpreter, not the worker's
    return {"version": record.get("version"), **pull_missing(project)}
