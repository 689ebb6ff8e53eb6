"""The explicit aclImdb download, exercised on a local fixture tarball (file:// URL)."""

from __future__ import annotations

import tarfile

import pytest

from textloop.cli.download import download_aclimdb
from textloop.core.errors import UserError


def _tarball(tmp_path, members: dict[str, str]):
    src = tmp_path / "src"
    for rel, text in members.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    tar_path = tmp_path / "fixture.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src / "aclImdb", arcname="aclImdb")
    return tar_path


def test_download_and_extract_from_a_local_url(tmp_path):
    tar_path = _tarball(tmp_path, {"aclImdb/train/pos/0_9.txt": "good",
                                   "aclImdb/train/neg/0_1.txt": "bad"})
    folder = download_aclimdb(tmp_path / "dest", tar_path.as_uri())
    assert (folder / "train/pos/0_9.txt").read_text() == "good"
    assert not list((tmp_path / "dest").glob("*.part"))


def test_bad_tarball_and_unreachable_url(tmp_path):
    tar_path = _tarball(tmp_path, {"aclImdb/README": "x"})
    with pytest.raises(UserError, match="no aclImdb/train/pos"):
        download_aclimdb(tmp_path / "d1", tar_path.as_uri())
    with pytest.raises(UserError, match="download failed"):
        download_aclimdb(tmp_path / "d2", (tmp_path / "missing.tar.gz").as_uri())
