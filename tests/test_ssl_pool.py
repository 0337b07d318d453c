"""Unlabeled pool: raw validation errors, preprocessing equal to nnU-Net's own, incremental and atomic re-runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from PIL import Image

from nnunet_ext.cli import preprocess_unlabeled
from nnunet_ext.data.synthetic import synthesize_case
from nnunet_ext.ssl.preprocessing import StalePoolError, completed_cases, preprocess_pool
from nnunet_ext.ssl.raw_pool import PoolCase, PoolValidationError, find_pool_cases, read_pool_case

POOL_DATASET_ID = 975
POOL_3D_DATASET_ID = 974


def write_png(path, image: np.ndarray) -> None:
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)


def write_volume(path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def synthetic_image(shape, seed: int) -> np.ndarray:
    image, _ = synthesize_case(shape, (1.0,) * len(shape), 1, np.random.default_rng(seed))
    return image[0]


def problems_of(error: pytest.ExceptionInfo) -> list[str]:
    return error.value.problems


def run_console_script(environment, name: str, *args: str) -> subprocess.CompletedProcess:
    """Run a console script installed beside this interpreter; the caller checks the exit status."""
    executable = shutil.which(name, path=os.path.dirname(sys.executable))
    return subprocess.run([executable, *args], env=environment.env, capture_output=True, text=True, timeout=600)


# --------------------------------------------------------------------------------------------- raw validation
def test_cases_are_listed_with_channel_files_in_order_and_side_files_ignored(tmp_path):
    for case in ("b", "a_x"):
        for channel in (1, 0):
            (tmp_path / f"{case}_{channel:04d}.nii.gz").touch()
    (tmp_path / "provenance.json").write_text("{}")
    (tmp_path / ".DS_Store").touch()
    cases = find_pool_cases(tmp_path, ".nii.gz", files_per_case=2)
    assert cases == [
        PoolCase("a_x", (str(tmp_path / "a_x_0000.nii.gz"), str(tmp_path / "a_x_0001.nii.gz"))),
        PoolCase("b", (str(tmp_path / "b_0000.nii.gz"), str(tmp_path / "b_0001.nii.gz"))),
    ]


def test_naming_errors_name_every_offending_file(tmp_path):
    for name in ("ok_0000.png", "ok_0001.png", "photo_0000.jpg", "nochannel.png", "extra_0002.png", "half_0000.png"):
        (tmp_path / name).touch()
    (tmp_path / "subfolder").mkdir()
    with pytest.raises(PoolValidationError) as error:
        find_pool_cases(tmp_path, ".png", files_per_case=2)
    problems = problems_of(error)
    assert len(problems) == 5
    expected = {
        "photo_0000.jpg": "file ending is not the dataset's '.png'",
        "nochannel.png": "not named {case}_{XXXX}.png",
        "extra_0002.png": "channel index 0002, but the dataset's cases have 2 channel file(s)",
        "half": "missing channel file(s) half_0001.png",
        "subfolder": "not a file",
    }
    for name, message in expected.items():
        assert any(str(tmp_path / name) in p and message in p for p in problems), (name, problems)


def test_missing_folder_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagesUl does not exist"):
        find_pool_cases(tmp_path / "imagesUl", ".png", 1)


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken_0000.png").write_bytes(b"this is not a png")
    case = find_pool_cases(tmp_path, ".png", 1)[0]
    with pytest.raises(PoolValidationError, match=r"broken_0000\.png: cannot be read by NaturalImage2DIO"):
        read_pool_case(case, NaturalImage2DIO, num_channels=1, training_is_2d=True)


def test_rgb_image_in_a_grayscale_dataset_is_a_channel_error(tmp_path):
    rgb = np.stack([synthetic_image((32, 32), seed) for seed in range(3)], axis=-1)
    write_png(tmp_path / "rgb_0000.png", rgb)
    case = find_pool_cases(tmp_path, ".png", 1)[0]
    with pytest.raises(PoolValidationError, match=r"rgb_0000\.png: 3 channel\(s\) read, the dataset has 1"):
        read_pool_case(case, NaturalImage2DIO, num_channels=1, training_is_2d=True)
    data, properties = read_pool_case(case, NaturalImage2DIO, num_channels=3, training_is_2d=True)
    assert data.shape == (3, 1, 32, 32) and properties["spacing"] == (999, 1, 1)


def test_geometry_errors_name_the_file(tmp_path):
    # .mha rather than NIfTI: SimpleITK's NIfTI writer does not keep NaN
    volume = synthetic_image((6, 16, 16), 0)
    write_volume(tmp_path / "shape_0000.mha", volume)
    write_volume(tmp_path / "shape_0001.mha", volume[:, :12])
    write_volume(tmp_path / "spacing_0000.mha", volume)
    write_volume(tmp_path / "spacing_0001.mha", volume, spacing=(1.0, 1.0, 2.0))
    with_nan = volume.copy()
    with_nan[2, 3, 4] = np.nan
    write_volume(tmp_path / "nan_0000.mha", with_nan)
    write_volume(tmp_path / "nan_0001.mha", volume)
    cases = {case.name: case for case in find_pool_cases(tmp_path, ".mha", 2)}

    with pytest.raises(PoolValidationError) as error:
        read_pool_case(cases["shape"], SimpleITKIO, 2, training_is_2d=False)
    assert problems_of(error) == [
        f"{tmp_path / 'shape_0001.mha'}: shape (6, 12, 16) / spacing (1.0, 1.0, 1.0) differ from "
        f"{tmp_path / 'shape_0000.mha'}: shape (6, 16, 16) / spacing (1.0, 1.0, 1.0)"
    ]
    with pytest.raises(PoolValidationError, match=r"spacing_0001\.mha: shape \(6, 16, 16\) / spacing \(2\.0"):
        read_pool_case(cases["spacing"], SimpleITKIO, 2, training_is_2d=False)
    with pytest.raises(PoolValidationError, match=r"nan_0000\.mha, .*nan_0001\.mha: 1 voxel\(s\) are NaN or infinite"):
        read_pool_case(cases["nan"], SimpleITKIO, 2, training_is_2d=False)
    with pytest.raises(PoolValidationError, match=r"image of shape \(6, 16, 16\) in a 2D dataset"):
        read_pool_case(cases["nan"], SimpleITKIO, 2, training_is_2d=True)


# ------------------------------------------------------------------------------------------------ preprocessing
@pytest.fixture(scope="module")
def pool_dataset(synthetic_2d, copy_prepared_dataset, nnunet_environment):
    """A copy of the 2D dataset whose imagesUl/ holds two training images under new names and one new image."""
    spec = copy_prepared_dataset(synthetic_2d, POOL_DATASET_ID)
    raw = nnunet_environment.raw / spec.folder_name
    (raw / "imagesUl").mkdir()
    for index in (0, 1):
        shutil.copy(raw / "imagesTr" / f"synth_tr_{index:03d}_0000.png", raw / "imagesUl" / f"copy{index}_0000.png")
    write_png(raw / "imagesUl" / "fresh_0000.png", synthetic_image(spec.shape, 123))
    return spec


def test_preprocessed_pool_equals_nnunets_preprocessing_of_the_same_images(pool_dataset, nnunet_paths):
    report = preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0)
    assert report.preprocessed == ["copy0", "copy1", "fresh"] and not report.failed
    preprocessed = nnunet_paths.preprocessed / pool_dataset.folder_name
    pool = preprocessed / "nnUNetPlans_2d_unlabeled" / "real"
    assert report.folder == pool and completed_cases(pool) == {"copy0", "copy1", "fresh"}
    for index in (0, 1):
        labeled = preprocessed / "nnUNetPlans_2d" / f"synth_tr_{index:03d}"
        unlabeled = pool / f"copy{index}"
        np.testing.assert_array_equal(blosc2.open(f"{unlabeled}.b2nd")[:], blosc2.open(f"{labeled}.b2nd")[:])
        labeled_properties = pickle.loads(labeled.with_suffix(".pkl").read_bytes())
        unlabeled_properties = pickle.loads(unlabeled.with_suffix(".pkl").read_bytes())
        assert unlabeled_properties.pop("class_locations") == {}
        labeled_properties.pop("class_locations")
        assert unlabeled_properties == labeled_properties
        labeled_seg = blosc2.open(f"{labeled}_seg.b2nd")[:]
        np.testing.assert_array_equal(blosc2.open(f"{unlabeled}_seg.b2nd")[:], np.where(labeled_seg < 0, -1, 0))
    fresh = blosc2.open(str(pool / "fresh.b2nd"))[:]
    assert fresh.shape == (1, 1, *pool_dataset.shape) and abs(fresh.mean()) < 1e-3  # z-scored like the others
    manifest = json.loads((preprocessed / "nnUNetPlans_2d_unlabeled" / "real.json").read_text())
    assert manifest["raw_folder"] == "imagesUl" and manifest["num_channels"] == 1
    assert manifest["data_identifier"] == "nnUNetPlans_2d" and len(manifest["plans_fingerprint"]) == 64


def test_rerun_is_incremental_and_repairs_half_written_and_removed_cases(pool_dataset, nnunet_paths):
    preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0)
    raw = nnunet_paths.raw / pool_dataset.folder_name / "imagesUl"
    pool = nnunet_paths.preprocessed / pool_dataset.folder_name / "nnUNetPlans_2d_unlabeled" / "real"
    (pool / "copy1.pkl").unlink()  # as if interrupted before the case was complete
    (pool / ".copy1.abc.partial").mkdir()
    shutil.copy(raw / "fresh_0000.png", raw / "gone_0000.png")
    preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0)
    (raw / "gone_0000.png").unlink()
    before = (pool / "copy0.b2nd").stat().st_mtime_ns

    report = preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0)
    assert report.preprocessed == [] and report.skipped == ["copy0", "copy1", "fresh"] and report.removed == ["gone"]
    assert sorted(p.name for p in pool.iterdir()) == sorted(
        f"{case}{suffix}" for case in ("copy0", "copy1", "fresh") for suffix in (".b2nd", "_seg.b2nd", ".pkl")
    )
    assert (pool / "copy0.b2nd").stat().st_mtime_ns == before

    report = preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0, overwrite=True)
    assert report.preprocessed == ["copy0", "copy1", "fresh"] and report.skipped == []


def test_pool_of_other_plans_is_refused_unless_overwritten(pool_dataset, nnunet_paths):
    preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0)
    manifest_file = nnunet_paths.preprocessed / pool_dataset.folder_name / "nnUNetPlans_2d_unlabeled" / "real.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "plans_fingerprint": "0" * 64}))
    with pytest.raises(StalePoolError, match=r"preprocessed with other plans.*--overwrite"):
        preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0)
    preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0, overwrite=True)
    assert json.loads(manifest_file.read_text()) == manifest


def test_cli_with_worker_processes_writes_valid_cases_and_names_invalid_ones(pool_dataset, nnunet_environment):
    raw = nnunet_environment.raw / pool_dataset.folder_name
    (raw / "imagesSynth").mkdir()
    write_png(raw / "imagesSynth" / "ldm_000_0000.png", synthetic_image(pool_dataset.shape, 7))
    (raw / "imagesSynth" / "ldm_001_0000.png").write_bytes(b"\x89PNG truncated")
    result = run_console_script(
        nnunet_environment,
        "nnUNetv2_ext_preprocess_unlabeled",
        *("-d", str(POOL_DATASET_ID), "-c", "2d", "--pool", "synthetic", "-np", "2"),
    )
    assert result.returncode == 2, result.stderr
    assert "1 preprocessed" in result.stdout and "1 failed" in result.stdout
    assert f"{raw / 'imagesSynth' / 'ldm_001_0000.png'}: cannot be read" in result.stdout
    assert "Preprocessing pool 'synthetic'" in result.stderr  # the progress bar
    pool = nnunet_environment.preprocessed / pool_dataset.folder_name / "nnUNetPlans_2d_unlabeled" / "synthetic"
    assert completed_cases(pool) == {"ldm_000"}


def test_cli_reports_naming_errors_before_touching_the_pool(pool_dataset, nnunet_paths):
    preprocess_pool(POOL_DATASET_ID, "2d", pool="real", num_processes=0)
    raw = nnunet_paths.raw / pool_dataset.folder_name
    bad = raw / "imagesUl" / "scan.png"
    shutil.copy(raw / "imagesUl" / "fresh_0000.png", bad)
    try:
        with pytest.raises(SystemExit) as exit_status:
            preprocess_unlabeled.main(["-d", str(POOL_DATASET_ID), "-c", "2d", "--pool", "real", "--overwrite"])
    finally:
        bad.unlink()
    assert str(exit_status.value).startswith(
        f"nnUNetv2_ext_preprocess_unlabeled: error: {bad}: not named {{case}}_{{XXXX}}.png"
    )
    pool = nnunet_paths.preprocessed / pool_dataset.folder_name / "nnUNetPlans_2d_unlabeled" / "real"
    assert completed_cases(pool) == {"copy0", "copy1", "fresh"}


def test_3d_pool_is_resampled_to_the_plans_spacing_like_training_images(
    synthetic_3d, copy_prepared_dataset, nnunet_paths
):
    spec = copy_prepared_dataset(synthetic_3d, POOL_3D_DATASET_ID)
    raw = nnunet_paths.raw / spec.folder_name
    (raw / "imagesUl").mkdir()
    shutil.copy(raw / "imagesTr" / "synth_tr_000_0000.nii.gz", raw / "imagesUl" / "copy_0000.nii.gz")
    fine = synthetic_image((32, 48, 48), 5) * 1000  # 1.5 mm slices instead of the dataset's 3 mm
    write_volume(raw / "imagesUl" / "fine_0000.nii.gz", fine, spacing=(1.0, 1.0, 1.5))

    report = preprocess_pool(POOL_3D_DATASET_ID, "3d_fullres", pool="real", num_processes=0)
    assert report.preprocessed == ["copy", "fine"] and not report.failed
    preprocessed = nnunet_paths.preprocessed / spec.folder_name
    pool = preprocessed / "nnUNetPlans_3d_fullres_unlabeled" / "real"
    labeled = blosc2.open(str(preprocessed / "nnUNetPlans_3d_fullres" / "synth_tr_000.b2nd"))[:]
    np.testing.assert_array_equal(blosc2.open(str(pool / "copy.b2nd"))[:], labeled)
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [3.0, 1.0, 1.0]
    assert blosc2.open(str(pool / "fine.b2nd")).shape == (1, 16, 48, 48)  # 32 slices x 1.5 mm -> 16 x 3 mm
    assert pickle.loads((pool / "fine.pkl").read_bytes())["spacing"] == [1.5, 1.0, 1.0]
