"""The errors a converter reports. Every one names the offending file (or folder) and what is wrong with it.

A converter validates the whole source before it writes anything and reports *all* problems it found at once,
as one :class:`InvalidSourceError` whose ``problems`` are instances of the named :class:`SourceProblem` kinds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


class ConversionWarning(UserWarning):
    """Something the converted dataset holds that the user should know (the command line prints it as one line)."""


class ConversionError(Exception):
    """Base class: anything a converter refuses to do; the command line prints the message and exits with 2."""


class DatasetExistsError(ConversionError, FileExistsError):
    """The target dataset folder (or another folder with the same dataset id) already exists."""


class InvalidDatasetNameError(ConversionError, ValueError):
    """The dataset name cannot be the ``<Name>`` of nnU-Net's ``DatasetXXX_<Name>`` folder (a path, spaces, ...)."""


class SourceLayoutError(ConversionError):
    """The input folder does not have the layout the converter expects (a folder or list file is missing)."""


class OutputVerificationError(ConversionError):
    """nnU-Net's own ``verify_dataset_integrity`` rejected the converted dataset (nothing was moved into place)."""


class SourceProblem(ConversionError):  # noqa: N818 (the base of the named *Error kinds below)
    """One problem with one source file."""

    kind = "problem"

    def __init__(self, path: str | os.PathLike, detail: str):
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.path}: {self.kind}: {detail}")


class MissingPartnerError(SourceProblem):
    """An image without its mask/label, or a mask/label without its image (or a listed file that is absent)."""

    kind = "missing partner file"


class SizeMismatchError(SourceProblem):
    """Image and mask/label differ in size (shape) or voxel spacing."""

    kind = "size mismatch"


class UnexpectedLabelError(SourceProblem):
    """A mask/label holds values the label table does not allow."""

    kind = "unexpected label values"


class UnreadableFileError(SourceProblem):
    """A file cannot be read or decoded (truncated, corrupt compressed data), or lacks an expected entry (array key,
    header field)."""

    kind = "unreadable file"


class NonFiniteValueError(SourceProblem):
    """An image holds NaN or infinite values."""

    kind = "non-finite values"


class ChannelCountError(SourceProblem):
    """An image does not decode to the dataset's channel count (mixed gray/RGB, transparency, 4-D volume)."""

    kind = "mixed channel counts"


class InvalidSourceError(ConversionError):
    """The source failed validation; ``problems`` lists every problem found (nothing was written)."""

    max_listed = 25

    def __init__(self, problems: Sequence[SourceProblem]):
        self.problems = list(problems)
        lines = [str(problem) for problem in self.problems[: self.max_listed]]
        if len(self.problems) > self.max_listed:
            lines.append(f"... and {len(self.problems) - self.max_listed} more")
        super().__init__(f"the source failed validation ({len(self.problems)} problem(s)):\n  " + "\n  ".join(lines))
