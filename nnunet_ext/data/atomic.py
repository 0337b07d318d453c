"""Write a folder or a file completely or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` that replaces ``target`` only when the block succeeds.

    On any exception the temporary folder is removed and ``target`` is left as it was. An existing ``target`` is
    moved aside before the new folder takes its place and deleted only afterwards, so no moment exists at which
    neither is on disk.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        if target.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".previous", dir=target.parent))
            os.replace(target, previous)
            os.replace(staging, target)
            shutil.rmtree(previous)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` that is renamed to ``target`` only when the block succeeds.

    Readers see either the previous ``target`` or the complete new one, never a partly written file; on any
    exception the temporary file is removed. The temporary name keeps ``target``'s file ending (writers that infer
    the format from it work), behind a hidden prefix.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".partial" + "".join(target.suffixes)
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically (see :func:`atomic_file`)."""
    with atomic_file(target) as temporary:
        temporary.write_text(text)


def write_json_atomically(path: str | os.PathLike, content: object) -> None:
    """Write ``content`` as JSON to ``path`` atomically: ``path`` is complete or unchanged."""
    atomic_write_text(path, json.dumps(content, indent=4))
