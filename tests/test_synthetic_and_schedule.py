"""The synthetic dataset generator and the environment-driven schedule overrides."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_ext.data.atomic import atomic_directory
from nnunet_ext.data.synthetic import LABELS, SyntheticDatasetSpec, generate_synthetic_dataset, synthesize_case
from nnunet_ext.trainers.schedule import rampup_mode, schedule_overrides


def test_2d_dataset_layout_and_content(tmp_path):
    spec = SyntheticDatasetSpec(dataset_id=5, shape=(48, 64), num_training=3, num_test=2, num_channels=2)
    folder = generate_synthetic_dataset(spec, tmp_path)
    assert folder == tmp_path / "Dataset005_Synthetic"
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == LABELS and dataset_json["numTraining"] == 3
    assert dataset_json["channel_names"] == {"0": "gray", "1": "contrast1"} and dataset_json["file_ending"] == ".png"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir())[:2] == [
        "synth_tr_000_0000.png",
        "synth_tr_000_0001.png",
    ]
    assert len(list((folder / "imagesTs").iterdir())) == 4 and len(list((folder / "labelsTs").iterdir())) == 2
    label = np.array(Image.open(folder / "labelsTr" / "synth_tr_000.png"))
    assert label.shape == (48, 64) and set(np.unique(label)) == {0, 1, 2, 3}


def test_3d_dataset_keeps_spacing(tmp_path):
    spec = SyntheticDatasetSpec(shape=(16, 32, 40), spacing=(3.0, 1.0, 0.5), num_training=1, num_test=0)
    folder = generate_synthetic_dataset(spec, tmp_path)
    image = sitk.ReadImage(str(folder / "imagesTr" / "synth_tr_000_0000.nii.gz"))
    assert sitk.GetArrayFromImage(image).shape == (16, 32, 40) and image.GetSpacing() == (0.5, 1.0, 3.0)


def test_classes_are_not_separable_by_intensity_alone():
    image, label = synthesize_case((128, 128), (1.0, 1.0), 1, np.random.default_rng(3))
    ranges = [(image[0][label == c].min(), image[0][label == c].max()) for c in (1, 2, 3)]
    background = image[0][label == 0]
    for low, high in ranges:
        inside = np.mean((background > low) & (background < high))
        assert inside > 0.1, "background intensities must overlap every class's"


def test_generation_is_deterministic_and_refuses_to_overwrite(tmp_path):
    spec = SyntheticDatasetSpec(shape=(32, 32), num_training=1, num_test=0, seed=7)
    first = np.array(
        Image.open(generate_synthetic_dataset(spec, tmp_path / "a") / "imagesTr" / "synth_tr_000_0000.png")
    )
    second = np.array(
        Image.open(generate_synthetic_dataset(spec, tmp_path / "b") / "imagesTr" / "synth_tr_000_0000.png")
    )
    np.testing.assert_array_equal(first, second)
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(spec, tmp_path / "a")
    generate_synthetic_dataset(spec, tmp_path / "a", overwrite=True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SyntheticDatasetSpec(shape=(8, 8)), "at least 16"),
        (SyntheticDatasetSpec(shape=(32, 32), spacing=(1.0, 1.0)), "only meaningful for 3D"),
        (SyntheticDatasetSpec(shape=(32, 32, 32), spacing=(1.0, 0.0, 1.0)), "positive value per axis"),
        (SyntheticDatasetSpec(dataset_id=1000), "1..999"),
    ],
)
def test_invalid_specs_are_rejected_before_writing(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic_dataset(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_leaves_nothing_after_a_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "half.txt").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_keeps_the_old_folder_after_a_failed_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "old.txt").read_text() == "old"


def test_schedule_overrides_from_environment():
    environ = {"nnUNet_ext_num_epochs": "3", "nnUNet_ext_num_iterations_per_epoch": " 7 ", "nnUNet_ext_save_every": ""}
    assert schedule_overrides(environ) == {"num_epochs": 3, "num_iterations_per_epoch": 7}
    assert schedule_overrides({}) == {}


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_schedule_values_name_the_variable(value):
    with pytest.raises(ValueError, match=f"nnUNet_ext_num_val_iterations_per_epoch={value!r}"):
        schedule_overrides({"nnUNet_ext_num_val_iterations_per_epoch": value})


def test_rampup_mode_from_environment():
    assert rampup_mode({}) == "published" and rampup_mode({"nnUNet_ext_rampup": " "}) == "published"
    assert rampup_mode({"nnUNet_ext_rampup": "relative"}) == "relative"
    with pytest.raises(ValueError, match="nnUNet_ext_rampup='Relative': expected one of published, relative"):
        rampup_mode({"nnUNet_ext_rampup": "Relative"})
