"""Preprocessing of the unlabeled pool with the dataset's own plans (``nnUNetv2_ext_preprocess_unlabeled``).

Each pool case goes through the preprocessor the plans name (nnU-Net's ``DefaultPreprocessor``: transpose, crop to
the nonzero region, normalise with the dataset's intensity properties, resample to the configuration's spacing) and
is saved with ``nnUNetDatasetBlosc2.save_case`` and nnU-Net's chunking, so its image equals what nnU-Net writes for
the same image as a training case. As the preprocessor does for images without a label, the saved segmentation is
the dummy all-background map (0 inside the nonzero region, -1 outside); ``class_locations`` is empty.

Incremental and atomic: a case is written into a hidden staging folder and moved into place file by file, its
``.pkl`` last, so a case counts as done only when complete; a re-run skips done cases, removes half-written ones and
cases whose raw image is gone. The manifest ``{pool}.json`` (see :mod:`nnunet_ext.ssl.layout`) records the plans
fingerprint: a pool preprocessed with other plans is refused (re-run with ``overwrite``) rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
from tqdm import tqdm

from nnunet_ext.data.atomic import write_json_atomically
from nnunet_ext.ssl.layout import POOL_RAW_FOLDERS, pool_folder, pool_manifest
from nnunet_ext.ssl.raw_pool import PoolCase, PoolValidationError, find_pool_cases, read_pool_case

#: configuration entries that change the preprocessed image (architecture and batch size do not)
PREPROCESSING_KEYS = (
    "data_identifier",
    "preprocessor_name",
    "spacing",
    "normalization_schemes",
    "use_mask_for_norm",
    "resampling_fn_data",
    "resampling_fn_data_kwargs",
    "resampling_fn_seg",
    "resampling_fn_seg_kwargs",
)
CASE_FILE_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")  # in the order they are moved into place; the .pkl marks "done"


class StalePoolError(RuntimeError):
    """The preprocessed pool does not belong to the current plans (or channels)."""


def plans_fingerprint(
    plans_manager: PlansManager, configuration_manager: ConfigurationManager, dataset_json: dict
) -> str:
    """SHA-256 of everything in the plans and dataset.json that determines a preprocessed image."""
    relevant = {
        "configuration": {k: configuration_manager.configuration.get(k) for k in PREPROCESSING_KEYS},
        "transpose_forward": list(plans_manager.transpose_forward),
        "intensity_properties": plans_manager.foreground_intensity_properties_per_channel,
        "image_reader_writer": plans_manager.plans.get("image_reader_writer"),
        "channel_names": dataset_json["channel_names"],
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def completed_cases(folder: str | os.PathLike) -> set[str]:
    """Cases of a preprocessed pool folder whose three files are all in place."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    names = {p.name for p in folder.iterdir() if p.is_file()}
    cases = {name[: -len(".pkl")] for name in names if name.endswith(".pkl")}
    return {case for case in cases if all(case + suffix in names for suffix in CASE_FILE_SUFFIXES)}


@dataclass
class PoolPreprocessingReport:
    """What one run did to one pool."""

    pool: str
    folder: Path
    preprocessed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        line = (
            f"pool {self.pool!r} -> {self.folder}: {len(self.preprocessed)} preprocessed, {len(self.skipped)} "
            f"already done, {len(self.removed)} removed (no longer in the raw folder), {len(self.failed)} failed"
        )
        return "\n".join([line, *self.failed.values()])


@dataclass(frozen=True)
class _CaseJob:
    case: PoolCase
    output_folder: str
    plans_manager: PlansManager
    configuration_manager: ConfigurationManager
    dataset_json: dict
    training_is_2d: bool | None


def preprocess_pool(
    dataset_name_or_id: int | str,
    configuration: str,
    plans_identifier: str = "nnUNetPlans",
    pool: str = "real",
    num_processes: int = 0,
    overwrite: bool = False,
) -> PoolPreprocessingReport:
    """Preprocess the raw pool ``pool`` of a dataset for ``configuration`` of ``plans_identifier``.

    Args:
        num_processes: spawned worker processes; 0 runs in this process.
        overwrite: recompute every case (and accept changed plans) instead of skipping done ones.

    Returns:
        The report; cases that failed validation are listed in ``report.failed`` and not written.

    Raises:
        FileNotFoundError: the plans, the configuration or the raw pool folder is missing.
        PoolValidationError: the raw folder is empty or its files are misnamed (nothing is written then).
        StalePoolError: the pool was preprocessed with other plans and ``overwrite`` is False.
    """
    if pool not in POOL_RAW_FOLDERS:
        raise ValueError(f"unknown pool {pool!r}; one of {sorted(POOL_RAW_FOLDERS)}")
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    preprocessed = Path(nnUNet_preprocessed) / dataset_name
    plans_file = preprocessed / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset_name} first")
    plans_manager = PlansManager(str(plans_file))
    if configuration not in plans_manager.available_configurations:
        raise FileNotFoundError(
            f"configuration {configuration!r} is not in {plans_file} (has {plans_manager.available_configurations})"
        )
    configuration_manager = plans_manager.get_configuration(configuration)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    raw_dataset = Path(nnUNet_raw) / dataset_name
    raw_pool = raw_dataset / POOL_RAW_FOLDERS[pool]

    cases = find_pool_cases(raw_pool, dataset_json["file_ending"], _files_per_case(raw_dataset, dataset_json))
    if not cases:
        raise PoolValidationError([f"{raw_pool}: no images"])
    data_identifier = configuration_manager.data_identifier
    folder = pool_folder(preprocessed, data_identifier, pool)
    manifest = {
        "pool": pool,
        "raw_folder": POOL_RAW_FOLDERS[pool],
        "plans": plans_identifier,
        "configuration": configuration,
        "data_identifier": data_identifier,
        "num_channels": len(dataset_json["channel_names"]),
        "file_ending": dataset_json["file_ending"],
        "plans_fingerprint": plans_fingerprint(plans_manager, configuration_manager, dataset_json),
    }
    _prepare_folder(folder, pool_manifest(preprocessed, data_identifier, pool), manifest, overwrite)

    report = PoolPreprocessingReport(pool, folder)
    wanted = {case.name for case in cases}
    report.removed = sorted(_remove_unfinished_and_stale(folder, wanted))
    done = completed_cases(folder)
    report.skipped = sorted(done & wanted)
    training_is_2d = _training_is_2d(preprocessed)
    jobs = [
        _CaseJob(case, str(folder), plans_manager, configuration_manager, dataset_json, training_is_2d)
        for case in cases
        if case.name not in done
    ]
    for name, error in _map_with_progress(_preprocess_case, jobs, num_processes, f"Preprocessing pool {pool!r}"):
        if error is None:
            report.preprocessed.append(name)
        else:
            report.failed[name] = error
    report.preprocessed.sort()
    return report


def _files_per_case(raw_dataset: Path, dataset_json: dict) -> int:
    """Channel files per training case of the raw dataset (one per channel, or one RGB(A) file)."""
    training = get_filenames_of_train_images_and_targets(str(raw_dataset), dataset_json)
    if training:
        return len(next(iter(training.values()))["images"])
    return len(dataset_json["channel_names"])


def _training_is_2d(preprocessed: Path) -> bool | None:
    """Whether every training image has a single slice (from nnU-Net's fingerprint); None if unknown."""
    fingerprint = preprocessed / "dataset_fingerprint.json"
    if not fingerprint.is_file():
        return None
    shapes = json.loads(fingerprint.read_text())["shapes_after_crop"]
    return all(shape[0] == 1 for shape in shapes)


def _prepare_folder(folder: Path, manifest_file: Path, manifest: dict, overwrite: bool) -> None:
    """Create ``folder`` and its manifest; refuse a pool of other plans unless ``overwrite`` (which empties it)."""
    if manifest_file.is_file() and not overwrite:
        existing = json.loads(manifest_file.read_text())
        if existing.get("plans_fingerprint") != manifest["plans_fingerprint"]:
            raise StalePoolError(
                f"{folder} was preprocessed with other plans ({manifest_file} records {existing.get('plans')!r}, "
                f"fingerprint {existing.get('plans_fingerprint', '?')[:12]}); re-run with --overwrite to "
                "preprocess the whole pool again"
            )
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(manifest_file, manifest)


def _remove_unfinished_and_stale(folder: Path, wanted: set[str]) -> set[str]:
    """Delete staging folders, files of incomplete cases, and complete cases not in ``wanted`` (returned); files that
    are not case files are left alone."""
    complete = completed_cases(folder)
    stale = complete - wanted
    for path in folder.iterdir():
        if path.is_dir():
            if path.name.startswith(".") and path.name.endswith(".partial"):  # staging of an interrupted run
                shutil.rmtree(path)
            continue
        suffix = next((s for s in sorted(CASE_FILE_SUFFIXES, key=len, reverse=True) if path.name.endswith(s)), "")
        case = path.name[: len(path.name) - len(suffix)] if suffix else None
        if case is not None and (case not in complete or case in stale):
            path.unlink()
    return stale


def _preprocess_case(job: _CaseJob) -> tuple[str, str | None]:
    """Validate, preprocess and atomically save one case; returns ``(case name, error message or None)``."""
    try:
        data, properties = read_pool_case(
            job.case,
            job.plans_manager.image_reader_writer_class,
            len(job.dataset_json["channel_names"]),
            job.training_is_2d,
        )
        preprocessor = job.configuration_manager.preprocessor_class(verbose=False)
        data, seg, properties = preprocessor.run_case_npy(
            data, None, properties, job.plans_manager, job.configuration_manager, job.dataset_json
        )
        properties["class_locations"] = {}
        _save_case_atomically(
            Path(job.output_folder),
            job.case.name,
            data.astype(np.float32, copy=False),
            seg.astype(np.int16, copy=False),
            properties,
            job.configuration_manager.patch_size,
        )
    except PoolValidationError as error:
        return job.case.name, str(error)
    except Exception as error:
        return job.case.name, f"{', '.join(job.case.files)}: preprocessing failed: {error!r}"
    return job.case.name, None


def _save_case_atomically(
    folder: Path, case: str, data: np.ndarray, seg: np.ndarray, properties: dict, patch_size: Sequence[int]
) -> None:
    """``nnUNetDatasetBlosc2.save_case`` with nnU-Net's chunking, into a staging folder, then moved into place."""
    blocks, chunks = comp_blosc2_params(data.shape, tuple(patch_size), data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(patch_size), seg.itemsize)
    staging = Path(tempfile.mkdtemp(prefix=f".{case}.", suffix=".partial", dir=folder))
    try:
        nnUNetDatasetBlosc2.save_case(
            data,
            seg,
            properties,
            str(staging / case),
            chunks=chunks,
            blocks=blocks,
            chunks_seg=chunks_seg,
            blocks_seg=blocks_seg,
        )
        for suffix in CASE_FILE_SUFFIXES:
            os.replace(staging / f"{case}{suffix}", folder / f"{case}{suffix}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _map_with_progress(
    function: Callable[[_CaseJob], tuple[str, str | None]], jobs: list[_CaseJob], num_processes: int, desc: str
) -> Iterator[tuple[str, str | None]]:
    """``function`` over ``jobs`` with a progress bar: in this process (0) or a spawn pool, results as they finish.

    Like nnU-Net's preprocessing, a pool whose worker died (e.g. killed for memory) is reported instead of waited on.
    """
    if num_processes == 0:
        for job in tqdm(jobs, desc=desc, unit="case"):
            yield function(job)
        return
    with multiprocessing.get_context("spawn").Pool(num_processes) as workers_pool:
        workers = list(workers_pool._pool)
        pending = [workers_pool.apply_async(function, (job,)) for job in jobs]
        with tqdm(total=len(jobs), desc=desc, unit="case") as progress:
            while pending:
                if not all(worker.is_alive() for worker in workers):
                    raise RuntimeError(
                        "a preprocessing worker died (out of memory?); re-run the command: finished cases are kept"
                    )
                ready = [result.ready() for result in pending]
                finished = [result for result, is_ready in zip(pending, ready) if is_ready]
                pending = [result for result, is_ready in zip(pending, ready) if not is_ready]
                for result in finished:
                    progress.update()
                    yield result.get()
                if pending:
                    time.sleep(0.05)
