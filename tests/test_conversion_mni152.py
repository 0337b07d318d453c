"""Dataset084_MNI152Tissue: 2-D axial tissue slices of the ICBM152 template in nilearn's wheel.

Everything is checked on the written files (positions from the NIfTI origins, labels and images read back); the
real template's tests need nilearn (the ``test`` extra installs it), the rule, option and error tests run on small
synthetic templates.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conversion_replicas import leftovers, listing
from scipy import ndimage

from nnunet_ext.conversion import mni152
from nnunet_ext.conversion.errors import SourceLayoutError
from nnunet_ext.conversion.writer import verify_with_nnunet

needs_nilearn = pytest.mark.skipif(find_spec("nilearn") is None, reason=f"needs nilearn ({mni152.INSTALL_HINT})")
TEMPLATE_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class WrittenSlice:
    """One written case: its split (``Tr``/``Ts``), height z (mm, from the image's origin), arrays ``(Y, X)``."""

    case_id: str
    split: str
    z: float
    image: np.ndarray
    label: np.ndarray
    header: sitk.Image


def written_slices(dataset: Path) -> list[WrittenSlice]:
    """Every case of imagesTr/imagesTs with its label, read back with SimpleITK; image and label share a grid."""
    slices = []
    for split in ("Tr", "Ts"):
        for path in sorted((dataset / f"images{split}").glob("*_0000.nii.gz")):
            case_id = path.name.removesuffix("_0000.nii.gz")
            image = sitk.ReadImage(str(path))
            label = sitk.ReadImage(str(dataset / f"labels{split}" / f"{case_id}.nii.gz"))
            for what in ("Size", "Spacing", "Origin", "Direction"):
                assert getattr(label, f"Get{what}")() == getattr(image, f"Get{what}")(), (case_id, what)
            assert image.GetSize()[2] == 1
            slices.append(
                WrittenSlice(
                    case_id,
                    split,
                    image.GetOrigin()[2],
                    sitk.GetArrayFromImage(image)[0],
                    sitk.GetArrayFromImage(label)[0],
                    image,
                )
            )
    return slices


def by_split(slices: list[WrittenSlice], split: str) -> list[WrittenSlice]:
    return [s for s in slices if s.split == split]


def slice_table(dataset: Path) -> list[dict[str, str]]:
    with open(dataset / mni152.SLICES_FILE) as handle:
        return list(csv.DictReader(handle))


def write_template(folder: Path, t1: np.ndarray, grey: np.ndarray, white: np.ndarray, spacing: float = 2.0) -> Path:
    """The three template files from ``(Z, Y, X)`` arrays, on the real template's axes (x and y flipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in (("t1", t1), ("grey_matter", grey), ("white_matter", white)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((spacing,) * 3)
        image.SetOrigin((20.0, 30.0, -40.0))
        image.SetDirection(TEMPLATE_DIRECTION)
        sitk.WriteImage(image, str(folder / mni152.SOURCE_FILES[key]), useCompression=True)
    return folder


def synthetic_arrays(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 30-slice template of 6 x 8 pixels: slices 0, 1, 28, 29 hold no brain, the others random probabilities
    (stored x 255, grey + white <= 255) and a few hand-picked pixels in slice 5 (see the rule test)."""
    grey = rng.integers(0, 256, (30, 6, 8)).astype(np.uint8)
    white = (rng.integers(0, 256, (30, 6, 8)) * (255 - grey.astype(int)) // 255).astype(np.uint8)
    grey[[0, 1, 28, 29]], white[[0, 1, 28, 29]] = 0, 0
    for x, (g, w) in enumerate([(100, 100), (60, 60), (90, 80), (100, 155), (128, 127), (0, 0)]):
        grey[5, 0, x], white[5, 0, x] = g, w
    t1 = rng.normal(100, 30, (30, 6, 8)).astype(np.float32)
    return t1, grey, white


@pytest.fixture(scope="module")
def template_dataset(tmp_path_factory) -> Path:
    """The real template converted with the defaults (2 mm), from the installed nilearn."""
    return mni152.convert_mni152(None, tmp_path_factory.mktemp("raw"), progress=False)


@needs_nilearn
def test_template_dataset_passes_nnunet_verify_with_the_stated_geometry(template_dataset):
    out = template_dataset
    assert out.name == "Dataset084_MNI152Tissue"
    verify_with_nnunet(out)
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1"}
    assert dataset["labels"] == {"background": 0, "grey_matter": 1, "white_matter": 2}
    assert (dataset["numTraining"], dataset["file_ending"]) == (52, ".nii.gz")
    slices = written_slices(out)
    assert (len(by_split(slices, "Tr")), len(by_split(slices, "Ts"))) == (52, 14)
    for written in slices:
        assert written.header.GetSize() == (99, 117, 1)
        assert written.header.GetSpacing() == (2.0, 2.0, 2.0)
        assert written.header.GetDirection() == TEMPLATE_DIRECTION
        assert written.image.dtype == np.float32 and written.label.dtype == np.uint8
    for split in ("Tr", "Ts"):
        assert set(np.unique(np.stack([s.label for s in by_split(slices, split)])).tolist()) == {0, 1, 2}


@needs_nilearn
def test_test_slab_is_at_least_the_gap_away_from_every_training_slice(template_dataset):
    slices = written_slices(template_dataset)
    train = np.array([s.z for s in by_split(slices, "Tr")])
    test = np.array([s.z for s in by_split(slices, "Ts")])
    # slice centres 2 mm thick: the space between a test and a training slice is their distance minus one spacing
    assert np.abs(train[:, None] - test[None, :]).min() - 2.0 >= mni152.DEFAULT_GAP
    assert np.array_equal(np.diff(np.sort(test)), np.full(len(test) - 1, 2.0))  # one contiguous axial slab
    assert (train < test.min()).any() and (train > test.max()).any()
    rows = slice_table(template_dataset)
    roles = {row["case_id"]: (row["role"], float(row["z_mm"])) for row in rows if row["case_id"]}
    assert roles == {s.case_id: ({"Tr": "train", "Ts": "test"}[s.split], s.z) for s in slices}
    assert sum(row["role"] == "gap" for row in rows) == 6


@needs_nilearn
def test_no_training_slice_equals_a_test_slice_or_its_mirror(template_dataset):
    slices = written_slices(template_dataset)
    train = np.stack([s.image for s in by_split(slices, "Tr")])
    for test in by_split(slices, "Ts"):
        for candidate in (test.image, test.image[:, ::-1]):  # x is the last array axis: [:, ::-1] mirrors left-right
            difference = np.abs(train - candidate).mean(axis=(1, 2))
            assert difference.min() > 5.0, test.case_id  # T1 values 0..233: far from equal
        np.testing.assert_allclose(test.image, test.image[:, ::-1], atol=1e-3)  # an axial slice is its own mirror


@needs_nilearn
def test_labels_follow_the_rule_where_the_source_is_unambiguous(template_dataset):
    """Independently of the converter: nibabel reads the 1 mm maps; where every source voxel within 2 mm (the
    reach of the 2 mm resampling) has the same strict argmax(1 - gm - wm, gm, wm), the written label must be it
    (a convex combination of such voxels keeps the argmax)."""
    import nibabel

    folder = mni152.nilearn_data_folder()
    maps = [nibabel.load(str(folder / mni152.SOURCE_FILES[key])) for key in ("grey_matter", "white_matter")]
    grey, white = (np.asarray(m.dataobj).astype(np.int16) for m in maps)  # probabilities x 255, compared exactly
    background = 255 - grey - white
    strict = np.full(grey.shape, -1, np.int8)
    strict[(background > grey) & (background > white)] = 0
    strict[(grey > background) & (grey > white)] = 1
    strict[(white > background) & (white > grey)] = 2
    uniform = (ndimage.minimum_filter(strict, size=5) == ndimage.maximum_filter(strict, size=5)) & (strict >= 0)
    to_voxel = np.linalg.inv(maps[0].affine)
    checked = np.zeros(3, int)
    for written in written_slices(template_dataset)[::5]:
        header = written.header
        rows, columns = np.indices(written.label.shape)
        index = np.stack([columns.ravel(), rows.ravel(), np.zeros(rows.size)])
        direction = np.reshape(header.GetDirection(), (3, 3))
        lps = np.asarray(header.GetOrigin())[:, None] + direction @ (np.asarray(header.GetSpacing())[:, None] * index)
        ras = np.vstack([-lps[0], -lps[1], lps[2], np.ones(rows.size)])  # SimpleITK's LPS -> nibabel's RAS
        voxel = (to_voxel @ ras)[:3].T
        index = np.round(voxel).astype(int)
        np.testing.assert_allclose(voxel, index, atol=1e-6)  # 2 mm grid points fall on source voxels
        decided = uniform[tuple(index.T)]
        expected = strict[tuple(index.T)][decided]
        np.testing.assert_array_equal(written.label.ravel()[decided], expected)
        checked += np.bincount(expected, minlength=3)
    assert checked.min() > 100, checked


def test_synthetic_template_rule_values_and_split(tmp_path):
    t1, grey, white = synthetic_arrays(np.random.default_rng(0))
    source = write_template(tmp_path / "src", t1, grey, white)
    argv = ["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]
    assert mni152.main(argv) == 0
    out = tmp_path / "raw" / "Dataset084_MNI152Tissue"
    slices = written_slices(out)
    # source at the target spacing: the volumes are used as stored, so the rule is checked on every pixel, in the
    # stored integers (x 255); pixels where background ties with a tissue are left out (a tie in floats is not exact)
    g, w = grey.astype(int), white.astype(int)
    b = 255 - g - w
    expected = np.where((b >= g) & (b >= w), 0, np.where(g >= w, 1, 2))
    exact = (b != g) & (b != w)
    for written in slices:
        k = round((written.z + 40.0) / 2.0)
        np.testing.assert_array_equal(written.image, t1[k])
        np.testing.assert_array_equal(written.label[exact[k]], expected[k][exact[k]])
    hand_picked = next(s for s in slices if s.case_id == "MNI152_z005").label[0, :6]
    assert hand_picked.tolist() == [1, 0, 1, 2, 1, 0]  # grey = white > background: the lower label, grey
    # 26 brain slices (2..27): test = the middle 5 (12..16), gap = 3 slices (6 mm) on each side
    heights = {split: sorted(round((s.z + 40.0) / 2.0) for s in by_split(slices, split)) for split in ("Tr", "Ts")}
    assert heights == {"Tr": [*range(2, 9), *range(20, 28)], "Ts": list(range(12, 17))}
    assert [row["role"] for row in slice_table(out)] == (
        ["excluded"] * 2 + ["train"] * 7 + ["gap"] * 3 + ["test"] * 5 + ["gap"] * 3 + ["train"] * 8 + ["excluded"] * 2
    )
    assert listing(out)[:3] == ["case_ids.csv", "dataset.json", "imagesTr/MNI152_z002_0000.nii.gz"]


def test_resampling_keeps_the_template_symmetric_and_centred(tmp_path):
    rng = np.random.default_rng(1)
    t1, grey, white = synthetic_arrays(rng)
    t1 = (t1 + t1[:, :, ::-1]) / 2
    volume = mni152.read_template(write_template(tmp_path / "src", t1, grey, white, spacing=1.0))["t1"]
    resampled = mni152.resample(volume, 3.0)
    assert resampled.GetSize() == (3, 2, 10) and resampled.GetSpacing() == (3.0, 3.0, 3.0)
    centre = [
        image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
        for image in (volume, resampled)
    ]
    np.testing.assert_allclose(centre[0], centre[1])
    array = sitk.GetArrayFromImage(resampled)
    np.testing.assert_allclose(array, array[:, :, ::-1], atol=1e-4)


@pytest.mark.parametrize(
    ("damage", "file_key", "message"),
    [
        ("truncate", "grey_matter", "unreadable file: truncated or corrupt compressed data"),
        ("delete", "white_matter", "missing partner file: not found"),
        ("resize", "white_matter", "size mismatch: size (8, 6, 29)"),
        ("nan", "t1", "non-finite values: 1 voxel(s) are NaN or infinite"),
    ],
)
def test_bad_input_exits_2_naming_the_file_and_writes_nothing(tmp_path, capsys, damage, file_key, message):
    t1, grey, white = synthetic_arrays(np.random.default_rng(0))
    source = write_template(tmp_path / "src", t1, grey, white)
    path = source / mni152.SOURCE_FILES[file_key]
    if damage == "truncate":
        data = path.read_bytes()
        assert len(gzip.decompress(data)) > 0
        path.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        path.unlink()
    elif damage == "resize":
        write_template(tmp_path / "other", t1[:29], grey[:29], white[:29])
        path.write_bytes((tmp_path / "other" / path.name).read_bytes())
    else:
        t1[3, 2, 2] = np.nan
        write_template(source, t1, grey, white)
    assert mni152.main(["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]) == 2
    stderr = capsys.readouterr().err
    assert f"{path}: {message}" in stderr and "Traceback" not in stderr
    assert leftovers(tmp_path / "raw") == []


def test_existing_dataset_is_refused_without_overwrite(tmp_path, capsys):
    t1, grey, white = synthetic_arrays(np.random.default_rng(0))
    source = write_template(tmp_path / "src", t1, grey, white)
    argv = ["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]
    assert mni152.main(argv) == 0
    before = listing(tmp_path / "raw")
    write_template(source, t1 + 1, grey, white)
    assert mni152.main(argv) == 2
    assert "Dataset084_MNI152Tissue already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert listing(tmp_path / "raw") == before
    assert mni152.main([*argv, "--overwrite"]) == 0
    image = sitk.ReadImage(str(tmp_path / "raw" / "Dataset084_MNI152Tissue" / "imagesTr" / "MNI152_z002_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], t1[2] + 1)


def test_without_nilearn_and_without_input_the_extra_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mni152, "find_spec", lambda name: None)
    assert mni152.main(["--output", str(tmp_path / "raw"), "--no-progress"]) == 2
    stderr = capsys.readouterr().err
    assert 'nilearn is not installed: pip install "nnunet_ext[mni152]" installs it' in stderr
    assert leftovers(tmp_path / "raw") == []


def test_slice_roles_gap_rounds_up_and_a_split_without_training_slices_is_refused():
    fractions = [0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.005]
    roles = mni152.assign_slices(fractions, spacing=4.0, gap=6.0, test_fraction=0.2, min_brain=0.01)
    assert roles == ["excluded", "train", "train", "gap", "gap", "test", "test", "gap", "gap", "train", "train",
                     "excluded"]  # fmt: skip
    with pytest.raises(SourceLayoutError, match="leave no training slice"):
        mni152.assign_slices(fractions, spacing=4.0, gap=16.0, test_fraction=0.2, min_brain=0.01)


@pytest.mark.parametrize(
    ("option", "message"),
    [("--spacing=0", "the spacing must be in (0, inf)"), ("--test-fraction=1", "the test fraction must be in (0, 1)")],
)
def test_out_of_range_options_are_refused_in_plain_words(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as exit_status:
        mni152.main(["--output", str(tmp_path), option])
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err
