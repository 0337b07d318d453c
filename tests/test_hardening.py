"""Bad input never passes silently (issue 18): each case names the file and the problem, exits with status 2 and
writes nothing; results get the modes the user's umask gives."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from conversion_replicas import listing, make_busi

from nnunet_ext.conversion.busi import convert_busi
from nnunet_ext.data.atomic import atomic_directory, atomic_file


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_results_get_the_modes_the_umask_gives(tmp_path):
    with umask(0o022):
        with atomic_directory(tmp_path / "folder") as staging:
            (staging / "file.txt").write_text("x")
        with atomic_file(tmp_path / "single.json") as temporary:
            temporary.write_text("{}")
        dataset = convert_busi(make_busi(tmp_path / "src", np.random.default_rng(0)), tmp_path / "raw", progress=False)
    assert mode(tmp_path / "folder") == 0o755 and mode(tmp_path / "single.json") == 0o644
    assert mode(dataset) == 0o755 and mode(dataset / "imagesTr") == 0o755
    assert {mode(dataset / name) for name in listing(dataset)} == {0o644}
    with umask(0o027), atomic_directory(tmp_path / "private") as staging:
        pass
    assert mode(tmp_path / "private") == 0o750
