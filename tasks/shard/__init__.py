"""shard: a deterministic train/val/test split by hashing the normalized text, written as
Parquet shards, with a class-balance report.

This file is the split rule alone (which split a text falls in), which the label stage runs
too; the shard stage's plan, its report and the shard writer are in shard_parts.py, and the
split files' contract, which later stages read, in textloop/core/splits.py."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from textloop.core.config import ShardConfig


def bucket(text: str, salt: str) -> float:
    """A stable number in [0, 1) per text: adding data never moves an existing row."""
    digest = hashlib.blake2b(f"{salt}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_plan(df: pd.DataFrame, cfg: ShardConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one split rule, per row (columns text and role): (split, the split the exact-text
    rule alone gives, near-duplicate group id). A row's split is the hash of its text, or with
    shard.near_duplicates.enabled of its near-duplicate group's canonical member (tasks.shard.neardup);
    an explicit test set (role == test) replaces the hashed test split."""
    texts = df["text"].tolist()
    groups, keys = _groups(texts, cfg)
    explicit = (df["role"] == "test").to_numpy()
    split = hashed_split(keys, cfg, explicit.any())
    exact = split if keys is texts else hashed_split(texts, cfg, explicit.any())
    return np.where(explicit, "test", split), np.where(explicit, "test", exact), groups


def split_names(df: pd.DataFrame, cfg: ShardConfig) -> np.ndarray:
    """train | val | test per row (split_plan). The label stage calls it too, so label-error
    detection and weak/pseudo labels touch train rows only. (It sees every clean row, shard only
    the labeled ones: a near-duplicate group can differ between the two, rarely.)"""
    return split_plan(df, cfg)[0]


def _groups(texts: list[str], cfg: ShardConfig) -> tuple[np.ndarray, list[str]]:
    """Group id per row and the text whose hash places it: its near-duplicate group's canonical
    member when the rule is enabled, else each row alone with its own text."""
    nd = cfg.near_duplicates
    if not nd.enabled or not texts:
        return np.arange(len(texts), dtype=np.int64), texts
    from tasks.shard.neardup import canonical_members, near_duplicate_groups

    groups = near_duplicate_groups(texts, nd.threshold, nd.shingle_words, nd.num_perm)
    return groups, canonical_members(texts, groups)


def hashed_split(keys: list[str], cfg: ShardConfig, explicit_test: bool) -> np.ndarray:
    """train/val/test per row from the hash of its key (val only when a test set is given)."""
    u = np.array([bucket(t, cfg.salt) for t in keys])
    if explicit_test:
        return np.where(u < cfg.val_fraction, "val", "train")
    return np.where(u < cfg.test_fraction, "test",
                    np.where(u < cfg.test_fraction + cfg.val_fraction, "val", "train"))
