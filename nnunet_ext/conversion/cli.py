"""The command-line skeleton every ``dataset_conversion/`` script shares.

Common options: ``-i/--input``, ``-d/--dataset-id``, ``--output`` (default ``$nnUNet_raw``), ``--overwrite``,
``--name``, ``--workers``, ``--no-progress``. Expected failures (:class:`ConversionError`) and operating-system
errors (a read-only or full output disk) print one readable message and exit with status 2; nothing is left
behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from nnunet_ext.command_line import HelpFormatter, print_warnings
from nnunet_ext.conversion.errors import ConversionError, ConversionWarning

T = TypeVar("T")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _dataset_id(text: str) -> int:
    value = _integer(text)
    if not 0 < value < 1000:
        raise argparse.ArgumentTypeError(f"a dataset id is 1..999, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _dataset_name(text: str) -> str:
    from nnunet_ext.conversion.writer import check_dataset_name

    return argument_type(check_dataset_name)(text)


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type=`` whose ValueError message is shown (instead of argparse's "invalid <function
    name> value")."""

    def parse_argument(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    return parse_argument


def label_map_argument(text: str):
    """argparse ``type=`` for ``--label-map`` (see :func:`nnunet_ext.conversion.labels.parse_label_map`)."""
    from nnunet_ext.conversion.labels import parse_label_map

    return argument_type(parse_label_map)(text)


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Meaningful defaults (see :class:`~nnunet_ext.command_line.HelpFormatter`), the source trees' layout kept."""


def converter_parser(
    description: str,
    dataset_id: int,
    name: str,
    epilog: str | None = None,
    input_help: str | None = None,
) -> argparse.ArgumentParser:
    """A parser with the common options; converters add their own.

    ``input_help`` makes ``-i/--input`` optional (default None) with that help text, for a converter that has a
    default source of its own; otherwise it is required and names the downloaded source dataset.
    """
    parser = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=_HelpFormatter)
    parser.add_argument(
        "-i",
        "--input",
        required=input_help is None,
        type=Path,
        help=input_help or "the downloaded (extracted) source dataset",
    )
    parser.add_argument("-d", "--dataset-id", type=_dataset_id, default=dataset_id, help="nnU-Net dataset id")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder that receives DatasetXXX_Name/ (default: $nnUNet_raw)",
    )
    parser.add_argument("--name", type=_dataset_name, default=name, help="dataset name (the folder is DatasetXXX_NAME)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DatasetXXX_NAME folder")
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="threads for validating/writing cases (default: min(4, CPUs))",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def output_root(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--output`` or ``$nnUNet_raw``; a parser error when neither is given."""
    if args.output is not None:
        return args.output
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        parser.error("--output is required when $nnUNet_raw is not set")
    return Path(raw)


def common_kwargs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The keyword arguments every ``convert_*`` function takes, from the common options (``source`` is None when
    an optional ``--input`` was not given)."""
    if args.input is not None and not args.input.is_dir():
        parser.error(f"--input {args.input} is not a folder")
    return {
        "source": args.input,
        "output_root": output_root(parser, args),
        "dataset_id": args.dataset_id,
        "name": args.name,
        "overwrite": args.overwrite,
        "workers": args.workers,
        "progress": not args.no_progress,
    }


def run(
    parser: argparse.ArgumentParser,
    convert: Callable[[argparse.Namespace, dict], Path],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, call ``convert(args, common_kwargs)``; print its warnings (one line each) and the result or
    the error. Returns the exit status."""
    args = parser.parse_args(argv)
    kwargs = common_kwargs(parser, args)
    try:
        with print_warnings(parser.prog, ConversionWarning):
            target = convert(args, kwargs)
    except (ConversionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(
        f"{folder.name}: {len(list(folder.iterdir()))}" for folder in sorted(target.iterdir()) if folder.is_dir()
    )
    print(f"wrote {target} ({counts})")
    return 0
