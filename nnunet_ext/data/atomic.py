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


def write_json_atomically(path: str | os.PathLike, content: object) -> None:
    """Write ``content`` as JSON to ``path`` through a temporary file beside it: ``path`` is complete or unchanged."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(json.dumps(content, indent=4))
    os.replace(staging, path)
