"""Partitioned ingest, clean, label, shard and batch scoring for corpora that do not fit in
memory (params.yaml backend.partitioned / partition_rows / partition_above / dask_address /
dask_scheduler). The rules are tasks/ (textloop/pipeline/partitions/partition_files.py says how they are split); this
module decides when to partition, runs the per-partition work on Dask and writes the stage's
declared outputs: the same files as the in-memory path (shards and the label queue byte for
byte; the single Parquet files with row groups of partition_rows, the same frame when read).

Per-partition work (normalising, MinHash band keys) runs as Dask tasks: a local scheduler
(`dask_scheduler`: synchronous | threads | processes) or, with `dask_address`, any
distributed scheduler whose workers see the project folder (a shared file system)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from textloop.core.config import BackendConfig
from textloop.core.layout import Project

log = logging.getLogger(__name__)


def use_partitions(cfg: BackendConfig, rows: int | None) -> bool:
    """The one switch: backend.partitioned true/false, or auto = more than partition_above rows
    (rows None: unknown without reading the whole input, so not partitioned)."""
    if cfg.partitioned in (True, False):
        return bool(cfg.partitioned)
    return rows is not None and rows > cfg.partition_above


def run_map(fn: Callable[..., Any], items: Sequence[Any], cfg: BackendConfig) -> list[Any]:
    """fn(item) for every item on Dask, results in item order: the scheduler at
    backend.dask_address, else the local `dask_scheduler`. Items and results are small (paths,
    compact arrays); the rows stay in files."""
    if cfg.dask_address:
        from distributed import Client

        with Client(cfg.dask_address) as client:
            return client.gather(client.map(fn, items, pure=False))
    import dask

    tasks = [dask.delayed(fn, pure=False)(item) for item in items]
    return list(dask.compute(*tasks, scheduler=cfg.dask_scheduler))



def scratch_dir(project: Project, stage: str) -> Path:
    """An empty scratch folder for a stage's part files (under paths.state, removed after)."""
    path = project.state / "partitions" / stage
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def quarantine_reasons(parts: Sequence[Path]) -> pd.DataFrame:
    """The `reason` column of quarantine part files (compact: one short string per row)."""
    cols = [pd.read_parquet(f, columns=["reason"]) for f in parts]
    return pd.concat(cols, ignore_index=True) if cols else pd.DataFrame({"reason": []})
