"""Helpers shared by the console scripts and the converter scripts: plain --help, one line on stderr and exit
status 2 for bad input and failed I/O."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

USER_ERRORS = (OSError, ValueError, RuntimeError)
"""What bad input (paths, options, file contents) and the operating system (a read-only or full disk, missing
permissions) raise; reported as one line instead of a traceback."""

EXIT_STATUS = 2
"""Exit status of a refused command (as argparse's for bad options and the dataset converters')."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with the defaults that mean something: none is shown for options without one (None, False, "") or
    whose help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, ""):
            return text
        return super()._get_help_string(action)


class CommandError(SystemExit):
    """Exit status 2 after the line ``program: error: message`` went to stderr; ``str()`` gives that line."""

    def __init__(self, line: str):
        super().__init__(EXIT_STATUS)
        self.line = line

    def __str__(self) -> str:
        return self.line


def fail(program: str, message: object) -> NoReturn:
    """Print ``program: error: message`` on stderr and exit with status 2."""
    line = f"{program}: error: {message}"
    print(line, file=sys.stderr)
    raise CommandError(line)


@contextmanager
def exit_on_user_error(program: str, errors: tuple[type[BaseException], ...] = USER_ERRORS) -> Iterator[None]:
    """Turn ``errors`` into ``program: error: message`` on stderr and exit status 2 (see :func:`fail`)."""
    try:
        yield
    except errors as error:
        fail(program, error)


@contextmanager
def print_warnings(program: str, category: type[Warning]) -> Iterator[None]:
    """Print every ``category`` warning raised in the block as one line ``program: warning: message`` on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        try:
            yield
        finally:
            for warning in caught:
                if issubclass(warning.category, category):
                    print(f"{program}: warning: {warning.message}", file=sys.stderr)
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
