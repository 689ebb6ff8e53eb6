"""The only code that downloads anything: the official aclImdb tarball, on explicit request."""

from __future__ import annotations

import logging
import shutil
import tarfile
import urllib.request
from pathlib import Path

from textloop.core.errors import UserError

log = logging.getLogger(__name__)

ACLIMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"


def fetch(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Stream a URL to a file (atomic rename; a partial download never looks complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, tmp.open("wb") as out:
            shutil.copyfileobj(resp, out, length=1 << 20)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{url}: download failed ({exc})") from exc
    tmp.replace(dest)
    return dest


def extract_aclimdb(tarball: Path, dest: Path) -> Path:
    """Unpack safely (no absolute paths or links out of dest) and return the aclImdb folder."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{tarball}: not a readable aclImdb tarball ({exc})") from exc
    folder = dest / "aclImdb"
    if not (folder / "train" / "pos").is_dir():
        raise UserError(f"{tarball}: no aclImdb/train/pos inside")
    return folder


def download_aclimdb(dest: Path, url: str = ACLIMDB_URL) -> Path:
    """Download (unless the tarball is already there) and unpack aclImdb_v1 into dest."""
    tarball = dest / "aclImdb_v1.tar.gz"
    if not tarball.is_file():
        log.info("downloading %s", url)
        fetch(url, tarball)
    return extract_aclimdb(tarball, dest)
