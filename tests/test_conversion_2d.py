"""2-D converters (ISIC 080, BUSI 081, OCT 082, thyroid 083) on tiny replicas of their source layouts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conversion_replicas import (
    binary_mask,
    leftovers,
    listing,
    make_busi,
    make_ddti,
    make_isic,
    make_tn3k,
    problems_by_file,
    read_png,
    write_image,
)
from PIL import Image

from nnunet_ext.conversion import oct, thyroid
from nnunet_ext.conversion.busi import convert_busi
from nnunet_ext.conversion.errors import (
    ChannelCountError,
    InvalidSourceError,
    MissingPartnerError,
    SizeMismatchError,
    UnexpectedLabelError,
    UnreadableFileError,
)
from nnunet_ext.conversion.isic import convert_isic


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_isic_official_layout(tmp_path, rng):
    source = make_isic(tmp_path / "src", rng)
    out = convert_isic(source, tmp_path / "raw", progress=False)
    assert out == tmp_path / "raw" / "Dataset080_ISIC2018"
    assert listing(out) == [
        "case_ids.csv",
        "dataset.json",
        *[f"imagesTr/ISIC_Tr{i:05d}_0000.png" for i in range(3)],
        "imagesTs/ISIC_Te00000_0000.png",
        "imagesTs/ISIC_Va00000_0000.png",
        *[f"labelsTr/ISIC_Tr{i:05d}.png" for i in range(3)],
        "labelsTs/ISIC_Te00000.png",
        "labelsTs/ISIC_Va00000.png",
    ]
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    assert (dataset["numTraining"], dataset["file_ending"]) == (3, ".png")
    for split, case in (("Tr", "ISIC_Tr00000"), ("Ts", "ISIC_Va00000")):
        folder = "Training" if split == "Tr" else "Validation"
        decoded = np.asarray(Image.open(source / f"ISIC2018_Task1-2_{folder}_Input" / f"{case}.jpg"))
        np.testing.assert_array_equal(read_png(out / f"images{split}" / f"{case}_0000.png"), decoded)
        label = read_png(out / f"labels{split}" / f"{case}.png")
        assert label.dtype == np.uint8 and label.ndim == 2
        np.testing.assert_array_equal(label, (binary_mask() > 0).astype(np.uint8))


def test_isic_bad_inputs_are_all_reported_and_nothing_is_written(tmp_path, rng):
    source = make_isic(tmp_path / "src", rng)
    images = source / "ISIC2018_Task1-2_Training_Input"
    masks = source / "ISIC2018_Task1_Training_GroundTruth"
    (masks / "ISIC_Tr00000_segmentation.png").unlink()
    write_image(masks / "ISIC_Tr00001_segmentation.png", binary_mask((10, 10)))
    (images / "ISIC_Tr00002.jpg").write_bytes(b"not a jpeg")
    write_image(images / "ISIC_Tr00003.png", rng.integers(0, 256, (20, 24), dtype=np.uint8))
    write_image(masks / "ISIC_Tr00003_segmentation.png", binary_mask())
    write_image(images / "ISIC_Tr00004.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    write_image(masks / "ISIC_Tr00004_segmentation.png", binary_mask(value=2))
    write_image(masks / "ISIC_Tr00009_segmentation.png", binary_mask())
    with pytest.raises(InvalidSourceError) as caught:
        convert_isic(source, tmp_path / "raw", progress=False)
    assert problems_by_file(caught.value) == {
        "ISIC_Tr00000.jpg": MissingPartnerError,
        "ISIC_Tr00001_segmentation.png": SizeMismatchError,
        "ISIC_Tr00002.jpg": UnreadableFileError,
        "ISIC_Tr00003.png": ChannelCountError,
        "ISIC_Tr00004_segmentation.png": UnexpectedLabelError,
        "ISIC_Tr00009_segmentation.png": MissingPartnerError,
    }
    assert "ISIC_Tr00002.jpg: unreadable file" in str(caught.value)
    assert leftovers(tmp_path / "raw") == []


def test_isic_images_masks0_layout_with_test_list(tmp_path, rng):
    source = tmp_path / "src"
    for name in ("a", "b", "c"):
        write_image(source / "images" / f"{name}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        write_image(source / "masks" / "0" / f"{name}.png", binary_mask((8, 8), (1, 4, 1, 4), value=1))
    (source / "test.txt").write_text("c.png\r\n")
    out = convert_isic(source, tmp_path / "raw", test_list=source / "test.txt", progress=False)
    assert listing(out)[2:] == ["imagesTr/a_0000.png", "imagesTr/b_0000.png", "imagesTs/c_0000.png",
                                "labelsTr/a.png", "labelsTr/b.png", "labelsTs/c.png"]  # fmt: skip
    np.testing.assert_array_equal(read_png(out / "labelsTr" / "a.png"), binary_mask((8, 8), (1, 4, 1, 4), value=1))


def test_busi_kaggle_layout(tmp_path, rng):
    source = make_busi(tmp_path / "src", rng)
    out = convert_busi(source, tmp_path / "raw", progress=False)
    cases = ["benign_1", "benign_2", "malignant_1", "normal_1"]
    assert listing(out) == sorted(
        [
            "case_ids.csv",
            "dataset.json",
            *[f"imagesTr/{c}_0000.png" for c in cases],
            *[f"labelsTr/{c}.png" for c in cases],
        ]
    )
    with open(out / "case_ids.csv") as handle:
        rows = {row["case_id"]: row["source"] for row in csv.DictReader(handle)}
    assert rows["benign_1"] == ";".join(
        f"Dataset_BUSI_with_GT/benign/{n}" for n in ("benign (1).png", "benign (1)_mask.png", "benign (1)_mask_1.png")
    )
    base = source / "Dataset_BUSI_with_GT"
    masks = [
        np.asarray(Image.open(base / "benign" / n)) > 127 for n in ("benign (1)_mask.png", "benign (1)_mask_1.png")
    ]
    np.testing.assert_array_equal(read_png(out / "labelsTr" / "benign_1.png"), (masks[0] | masks[1]).astype(np.uint8))
    gray = np.asarray(Image.open(base / "benign" / "benign (1).png"))
    np.testing.assert_array_equal(
        read_png(out / "imagesTr" / "benign_2_0000.png"), gray
    )  # RGB-stored gray -> 1 channel
    assert read_png(out / "labelsTr" / "normal_1.png").max() == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "ultrasound"} and dataset["numTraining"] == 4

    dropped = convert_busi(source, tmp_path / "raw", dataset_id=181, drop_normal=True, progress=False)
    assert not any("normal" in name for name in listing(dropped))


def test_busi_bad_inputs(tmp_path, rng):
    source = make_busi(tmp_path / "src", rng)
    base = source / "Dataset_BUSI_with_GT"
    write_image(base / "malignant" / "malignant (2).png", rng.integers(0, 256, (16, 20, 4), dtype=np.uint8))
    write_image(base / "malignant" / "malignant (2)_mask.png", binary_mask((16, 20)))
    write_image(base / "malignant" / "malignant (3)_mask.png", binary_mask((16, 20)))
    with pytest.raises(InvalidSourceError) as caught:
        convert_busi(source, tmp_path / "raw", progress=False)
    assert problems_by_file(caught.value) == {
        "malignant (2).png": ChannelCountError,  # transparent RGBA
        "malignant (3)_mask.png": MissingPartnerError,
    }
    assert leftovers(tmp_path / "raw") == []


def test_busi_images_masks0_layout(tmp_path, rng):
    source = tmp_path / "src"
    for name in ("benign (1)", "malignant (1)"):
        write_image(source / "images" / f"{name}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        write_image(source / "masks" / "0" / f"{name}.png", binary_mask((8, 8), (2, 5, 2, 5)))
    out = convert_busi(source, tmp_path / "raw", progress=False)
    assert [n for n in listing(out) if n.startswith("labelsTr")] == [
        "labelsTr/benign_1.png",
        "labelsTr/malignant_1.png",
    ]
    assert read_png(out / "imagesTr" / "benign_1_0000.png").ndim == 2


def _palette_mask(values: np.ndarray) -> Image.Image:
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    return image


def test_oct_class_id_masks_voc_layout_and_colour_maps(tmp_path, rng):
    source = tmp_path / "voc"
    classes = np.zeros((12, 12), np.uint8)
    classes[2:5, 2:5], classes[7:10, 7:10] = 1, 2
    for name in ("scan1", "scan2"):
        write_image(
            source / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{name}.jpg",
            rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
        )
        (source / "VOCdevkit" / "VOC2007" / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        _palette_mask(classes).save(source / "VOCdevkit" / "VOC2007" / "SegmentationClass" / f"{name}.png")
    assert oct.main(["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]) == 0
    out = tmp_path / "raw" / "Dataset082_OCT"
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "edema": 1, "hole": 2} and dataset["channel_names"] == {"0": "OCT"}
    np.testing.assert_array_equal(read_png(out / "labelsTr" / "scan1.png"), classes)
    assert read_png(out / "imagesTr" / "scan1_0000.png").ndim == 2

    colours = tmp_path / "colour"
    write_image(colours / "images" / "scan1.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    _palette_mask(classes).convert("RGB").save(
        (colours / "masks").mkdir(parents=True) or colours / "masks" / "scan1.png"
    )
    argv = ["-i", str(colours), "--output", str(tmp_path / "raw"), "-d", "182", "--no-progress",
            "--label-map", "background=0,0,0;edema=255,0,0;hole=0,0,255"]  # fmt: skip
    assert oct.main(argv) == 0
    np.testing.assert_array_equal(read_png(tmp_path / "raw" / "Dataset182_OCT" / "labelsTr" / "scan1.png"), classes)

    write_image(colours / "masks" / "scan1.png", np.full((12, 12, 3), 7, np.uint8))
    assert oct.main([*argv[:5], "183", *argv[6:]]) == 2
    assert not (tmp_path / "raw" / "Dataset183_OCT").exists()


def test_thyroid_tn3k_jpeg_masks_and_fold_files(tmp_path, rng):
    source = make_tn3k(tmp_path / "tn3k", rng)
    assert thyroid.main(["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]) == 0
    out = tmp_path / "raw" / "Dataset083_Thyroid"
    assert [n for n in listing(out) if n.startswith("images")] == [
        *[f"imagesTr/trainval_{i:04d}_0000.png" for i in range(4)],
        "imagesTs/test_0000_0000.png",
    ]
    jpeg_mask = np.asarray(Image.open(source / "trainval-mask" / "0000.jpg"))
    assert len(np.unique(jpeg_mask)) > 2  # the replica's masks carry JPEG noise
    np.testing.assert_array_equal(read_png(out / "labelsTr" / "trainval_0000.png"), (jpeg_mask > 127).astype(np.uint8))
    assert json.loads((out / "splits_final.json").read_text()) == [
        {"train": ["trainval_0002", "trainval_0003"], "val": ["trainval_0000", "trainval_0001"]},
        {"train": ["trainval_0000", "trainval_0001"], "val": ["trainval_0002", "trainval_0003"]},
    ]


def test_thyroid_ddti_uppercase_suffix_and_tus_layout(tmp_path, rng):
    source = make_ddti(tmp_path / "ddti", rng)
    assert thyroid.main(["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]) == 0
    out = tmp_path / "raw" / "Dataset083_Thyroid"
    assert [n for n in listing(out) if n.startswith("labelsTr")] == [f"labelsTr/{i:04d}.png" for i in range(3)]
    image = np.asarray(Image.open(source / "DDTI dataset" / "DDTI" / "1_or_data" / "image" / "0001.PNG"))
    np.testing.assert_array_equal(read_png(out / "imagesTr" / "0001_0000.png"), image)

    tus = tmp_path / "tus"
    for name in ("n1", "n2"):
        write_image(tus / "images" / f"{name}.png", rng.integers(0, 256, (10, 10), dtype=np.uint8))
        write_image(tus / "masks" / f"{name}.png", binary_mask((10, 10), (1, 5, 1, 5), value=1))
    (tus / "notes.txt").write_text("stray")
    (tus / "test.txt").write_text("n2")
    argv = ["-i", str(tus), "--output", str(tmp_path / "raw"), "-d", "183", "--format", "tus", "--no-progress"]
    assert thyroid.main([*argv, "--test-list", str(tus / "test.txt")]) == 0
    assert listing(tmp_path / "raw" / "Dataset183_Thyroid")[2:] == [
        "imagesTr/n1_0000.png", "imagesTs/n2_0000.png", "labelsTr/n1.png", "labelsTs/n2.png"
    ]  # fmt: skip


def test_thyroid_bad_inputs(tmp_path, rng):
    source = make_tn3k(tmp_path / "tn3k", rng)
    (source / "trainval-mask" / "0001.jpg").unlink()
    (source / "test-image" / "0000.jpg").write_bytes(b"\xff\xd8 truncated")
    argv = ["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]
    with pytest.raises(InvalidSourceError) as caught:
        thyroid.convert_thyroid(source, tmp_path / "raw", progress=False)
    assert problems_by_file(caught.value) == {"0001.jpg": MissingPartnerError, "0000.jpg": UnreadableFileError}
    (source / "tn3k-trainval-fold1.json").write_text(json.dumps({"train": [0], "val": [7]}))
    assert thyroid.main(argv) == 2
    assert leftovers(tmp_path / "raw") == []
