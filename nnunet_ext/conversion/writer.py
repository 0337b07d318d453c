"""Validate a whole source, write the nnU-Net raw dataset into a staging folder, verify it, move it into place.

:func:`convert_dataset` is the one path every converter takes:

1. refuse to replace an existing dataset (or to add a second folder with the same dataset id);
2. ``check()`` every case and collect *all* problems (missing partners, size mismatches, unexpected label values,
   unreadable files, mixed channel counts) -> :class:`~nnunet_ext.conversion.errors.InvalidSourceError`;
3. write into a temporary folder beside the target (:func:`nnunet_ext.data.atomic.atomic_directory`):
   cases, ``dataset.json`` (nnU-Net's ``generate_dataset_json``), ``splits_final.json`` (nnU-Net's planner copies a
   raw-folder ``splits_final.json`` into ``nnUNet_preprocessed``), ``case_ids.csv`` and extra files;
4. run nnU-Net's ``verify_dataset_integrity`` on the staged folder; only then move it into place.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing.dummy
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from nnunet_ext.conversion.cases import SPLIT_FOLDERS, Case
from nnunet_ext.conversion.errors import (
    ChannelCountError,
    DatasetExistsError,
    InvalidDatasetNameError,
    InvalidSourceError,
    OutputVerificationError,
    SourceLayoutError,
    SourceProblem,
)
from nnunet_ext.data.atomic import atomic_directory

CASE_MAP_FILE = "case_ids.csv"
SPLITS_FILE = "splits_final.json"
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class DatasetDescription:
    """What goes into ``dataset.json``: ``channel_names`` {index: name}, ``labels`` {name: id} and metadata.

    ``metadata`` is passed to nnU-Net's ``generate_dataset_json`` as keyword arguments (``dataset_name``,
    ``reference``, ``release``, ``description``, ``license``, ``overwrite_image_reader_writer``, free keys).
    """

    name: str
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str
    metadata: dict = field(default_factory=dict)


def check_dataset_name(name: str) -> str:
    """``name`` if it can be the ``<Name>`` of nnU-Net's ``DatasetXXX_<Name>`` folder: one folder name of ASCII
    letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit (no ``/``, no ``..``, no spaces).

    Raises:
        InvalidDatasetNameError: otherwise.
    """
    if not _DATASET_NAME.fullmatch(name):
        raise InvalidDatasetNameError(
            f"dataset name {name!r} is not allowed: nnU-Net's folder is DatasetXXX_<name>, so the name must be "
            "letters, digits, '_', '-' or '.', starting with a letter or digit (no '/', no spaces)"
        )
    return name


def dataset_folder(output_root: str | os.PathLike, dataset_id: int, name: str) -> Path:
    """``output_root/DatasetXXX_name`` (``name`` checked by :func:`check_dataset_name`)."""
    if not 0 < dataset_id < 1000:
        raise ValueError(f"the dataset id must be in 1..999, got {dataset_id}")
    return Path(output_root) / f"Dataset{dataset_id:03d}_{check_dataset_name(name)}"


def _refuse_existing(target: Path, dataset_id: int, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise DatasetExistsError(f"{target} already exists (pass --overwrite to replace it)")
    if target.parent.is_dir():
        prefix = f"Dataset{dataset_id:03d}_"
        others = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.name != target.name]
        if others:
            raise DatasetExistsError(
                f"{others[0]} already uses dataset id {dataset_id}; nnU-Net needs one folder per id "
                f"(remove it or choose another -d)"
            )


def _map_cases(
    function: Callable[[Case], object], cases: Sequence[Case], desc: str, workers: int, progress: bool
) -> Iterator[tuple[Case, object]]:
    """``(case, function(case) or the SourceProblem it raised)`` in input order, with a progress bar."""

    def guarded(case: Case) -> object:
        try:
            return function(case)
        except SourceProblem as problem:
            return problem

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(guarded, cases)
        yield from zip(cases, tqdm(results, total=len(cases), desc=desc, unit="case", disable=not progress))


def validate_cases(
    cases: Sequence[Case],
    num_channels: int,
    workers: int = 4,
    progress: bool = True,
    known_problems: Sequence[SourceProblem] = (),
) -> None:
    """Check every case; raise :class:`InvalidSourceError` with all problems found (nothing is written).

    ``known_problems`` are those the converter found while pairing files; they are reported together.
    """
    duplicates = [key for key, count in Counter((c.split, c.case_id) for c in cases).items() if count > 1]
    if duplicates:
        raise SourceLayoutError(f"case ids occur more than once in a split: {duplicates[:10]}")
    if not any(case.split == "Tr" for case in cases) and not known_problems:
        raise SourceLayoutError("no training case found in the source")
    unlabeled = [c for c in cases if c.split == "Tr" and not c.has_label]
    if unlabeled:
        raise SourceLayoutError(f"training cases without a label: {[c.case_id for c in unlabeled[:10]]}")
    problems: list[SourceProblem] = list(known_problems)
    for case, result in _map_cases(lambda case: case.check(), cases, "validating", workers, progress):
        if isinstance(result, SourceProblem):
            problems.append(result)
        elif result != num_channels:
            problems.append(
                ChannelCountError(case.sources[0], f"{result} channel(s) where the dataset has {num_channels}")
            )
    if problems:
        raise InvalidSourceError(problems)


_VERIFY_LOCK = threading.Lock()


def verify_with_nnunet(folder: str | os.PathLike, workers: int = 4) -> None:
    """Run nnU-Net's ``verify_dataset_integrity`` on ``folder``; raise :class:`OutputVerificationError` on failure.

    Deviation from calling it plainly: nnU-Net runs its per-case checks (its own ``verify_labels`` and
    ``check_cases``) in a *spawn* process pool whose workers each import torch (seconds per worker, and a
    ``__main__`` guard needed in every calling script). We hand the module a thread pool with the same API
    (``multiprocessing.dummy``) for the duration of the call, so exactly nnU-Net's checks run in this process.
    """
    from nnunetv2.experiment_planning import verify_dataset_integrity as module

    output = io.StringIO()
    with _VERIFY_LOCK:
        original = module.multiprocessing
        module.multiprocessing = SimpleNamespace(get_context=lambda _method: multiprocessing.dummy)
        try:
            with contextlib.redirect_stdout(output):
                module.verify_dataset_integrity(str(folder), workers)
        except Exception as error:  # whatever nnU-Net's checks raise (assertions, reader errors) is their verdict
            raise OutputVerificationError(
                f"nnU-Net's verify_dataset_integrity rejected the converted dataset ({error}); nothing was written."
                f"\n{output.getvalue()[-4000:]}"
            ) from error
        finally:
            module.multiprocessing = original


def _write_case_map(path: Path, cases: Sequence[Case], input_root: Path | None) -> None:
    def shown(source: Path) -> str:
        if input_root is not None and source.is_relative_to(input_root):
            return source.relative_to(input_root).as_posix()
        return str(source)

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "split", "source"])
        for case in sorted(cases, key=lambda c: (c.split, c.case_id)):
            writer.writerow([case.case_id, SPLIT_FOLDERS[case.split][0], ";".join(shown(s) for s in case.sources)])


def convert_dataset(
    cases: Sequence[Case],
    description: DatasetDescription,
    output_root: str | os.PathLike,
    dataset_id: int,
    overwrite: bool = False,
    splits: list[dict[str, list[str]]] | None = None,
    extra_files: dict[str, str] | None = None,
    input_root: str | os.PathLike | None = None,
    case_map: bool = True,
    workers: int | None = None,
    progress: bool = True,
    known_problems: Sequence[SourceProblem] = (),
) -> Path:
    """Validate, write, verify and move into place ``output_root/DatasetXXX_<description.name>``; return it.

    ``splits`` (nnU-Net's ``[{"train": [...], "val": [...]}, ...]``) must name training cases only.
    ``case_map`` writes ``case_ids.csv`` (case id, folder, source files relative to ``input_root``).
    ``known_problems`` (found while pairing source files) are reported with the validation's own.

    Raises:
        InvalidDatasetNameError, DatasetExistsError, SourceLayoutError, InvalidSourceError, OutputVerificationError.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    target = dataset_folder(output_root, dataset_id, description.name)
    _refuse_existing(target, dataset_id, overwrite)
    validate_cases(cases, len(description.channel_names), workers, progress, known_problems)
    training = {case.case_id for case in cases if case.split == "Tr"}
    for fold, split in enumerate(splits or []):
        unknown = sorted((set(split["train"]) | set(split["val"])) - training)
        if unknown:
            raise SourceLayoutError(f"fold {fold} of the split names cases that are not training cases: {unknown[:10]}")
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    with atomic_directory(target, overwrite=overwrite) as staging:
        for images, labels in {SPLIT_FOLDERS[case.split] for case in cases}:
            (staging / images).mkdir()
            if labels and any(c.has_label for c in cases if SPLIT_FOLDERS[c.split][1] == labels):
                (staging / labels).mkdir()
        for _case, result in _map_cases(
            lambda case: case.write(staging, description.file_ending), cases, "writing", workers, progress
        ):
            if isinstance(result, SourceProblem):
                raise result
        generate_dataset_json(
            str(staging),
            dict(description.channel_names),
            dict(description.labels),
            len(training),
            description.file_ending,
            **description.metadata,
        )
        if splits is not None:
            (staging / SPLITS_FILE).write_text(json.dumps(splits, indent=4))
        if case_map:
            _write_case_map(staging / CASE_MAP_FILE, cases, Path(input_root) if input_root else None)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        verify_with_nnunet(staging, workers)
    return target
