"""Helpers shared by the console scripts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, RuntimeError)
"""What bad input (paths, options, file contents) raises; reported as one line instead of a traceback."""


@contextmanager
def exit_on_user_error(program: str) -> Iterator[None]:
    """Turn ``USER_ERRORS`` into ``program: error: message`` on stderr and exit status 1."""
    try:
        yield
    except USER_ERRORS as error:
        raise SystemExit(f"{program}: error: {error}") from error
