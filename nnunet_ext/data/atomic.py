"""Write a folder or a file completely or not at all.

Staging folders and files are created with the mode the user's umask gives (0755/0644 under umask 022), not
``tempfile``'s private 0700/0600, because they become the result.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _create_unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """``parent/{prefix}{random}{suffix}``, created by ``create`` (which raises FileExistsError if it exists)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no unused name {prefix}*{suffix} in {parent}")


def staging_directory(parent: Path, prefix: str, suffix: str) -> Path:
    """A new empty folder ``parent/{prefix}{random}{suffix}`` with the mode the umask gives."""
    return _create_unique(parent, prefix, suffix, Path.mkdir)


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


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
    staging = staging_directory(target.parent, f".{target.name}.", ".partial")
    try:
        yield staging
        if target.exists():
            previous = staging_directory(target.parent, f".{target.name}.", ".previous")
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
    temporary = _create_unique(target.parent, f".{target.stem}.", suffix, _create_file)
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
