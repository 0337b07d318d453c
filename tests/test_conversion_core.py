"""Shared converter machinery: mask decoding, label maps, case ids, image modes, staging + nnU-Net verification,
and the dataset_conversion/ scripts as command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conversion_replicas import binary_mask, leftovers, listing, make_busi, write_image
from PIL import Image

from nnunet_ext.conversion.case_ids import safe_case_id, unique_case_ids
from nnunet_ext.conversion.cases import ImageMaskCase
from nnunet_ext.conversion.errors import ChannelCountError, OutputVerificationError, UnexpectedLabelError
from nnunet_ext.conversion.images import read_image_2d
from nnunet_ext.conversion.labels import BinaryMask, ColourMap, ValueMap, parse_label_map
from nnunet_ext.conversion.writer import DatasetDescription, convert_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "dataset_conversion").glob("Dataset*.py"))


def test_binary_mask_thresholding_rules():
    decode = BinaryMask()
    zero_one = binary_mask(value=1)
    np.testing.assert_array_equal(decode(zero_one, "m.png"), zero_one)
    noisy = binary_mask()
    noisy[0, 0], noisy[5, 6], noisy[1, 1] = 1, 254, 120
    np.testing.assert_array_equal(decode(noisy, "m.png"), binary_mask(value=1))
    red = np.zeros((4, 4, 3), np.uint8)
    red[1:3, 1:3, 0] = 255
    assert decode(red, "m.png").sum() == 4
    with pytest.raises(UnexpectedLabelError, match=r"m\.png: unexpected label values: values \{0, 1, 2\}"):
        decode(np.array([[0, 1], [2, 0]], np.uint8), "m.png")


def test_label_maps_parse_and_decode(tmp_path):
    gray = parse_label_map("background=0;edema=128;hole=255|254", tolerance=3)
    assert isinstance(gray, ValueMap) and gray.labels == {"background": 0, "edema": 1, "hole": 2}
    np.testing.assert_array_equal(gray(np.array([[0, 126], [254, 255]], np.uint8), "m"), [[0, 1], [2, 2]])
    with pytest.raises(UnexpectedLabelError, match=r"1 pixels with values outside the label map, e.g. \[60\]"):
        gray(np.array([[0, 60]], np.uint8), "m")
    colour = parse_label_map("background=0,0,0;edema=255,0,0")
    assert isinstance(colour, ColourMap)
    mask = np.zeros((2, 2, 3), np.uint8)
    mask[0, 0] = (255, 0, 0)
    np.testing.assert_array_equal(colour(mask, "m"), [[1, 0], [0, 0]])
    spec = tmp_path / "map.json"
    spec.write_text(json.dumps({"background": 0, "hole": [2, 255]}))
    assert parse_label_map(str(spec)).entries == {"background": [0], "hole": [2, 255]}
    for bad in ("edema=1;background=0", "background=0;edema=255,0,0", "background"):
        with pytest.raises(ValueError):
            parse_label_map(bad)


def test_case_ids_are_safe_and_unique():
    assert safe_case_id("benign (1)") == "benign_1"
    assert unique_case_ids(["a b", "a_b", "a (b)"]) == {"a b": "a_b", "a_b": "a_b_2", "a (b)": "a_b_3"}
    with pytest.raises(ValueError):
        safe_case_id("()")


def test_image_channel_modes(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 90, 255
    write_image(tmp_path / "opaque.png", rgba)
    assert read_image_2d(tmp_path / "opaque.png", "rgb").shape == (3, 4, 5)
    np.testing.assert_array_equal(read_image_2d(tmp_path / "opaque.png", "gray"), np.full((1, 4, 5), 90))
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image_2d(tmp_path / "palette.png", "rgb")[:, 0, 0], [10, 20, 30])
    rgba[0, 0, 3] = 0
    write_image(tmp_path / "transparent.png", rgba)
    with pytest.raises(ChannelCountError, match="transparent"):
        read_image_2d(tmp_path / "transparent.png", "gray")


def test_nnunet_verification_failure_leaves_nothing(tmp_path):
    from nnunetv2.experiment_planning import verify_dataset_integrity as module

    pool_module = module.multiprocessing
    write_image(tmp_path / "src" / "a.png", np.zeros((6, 6), np.uint8))
    write_image(tmp_path / "src" / "a_mask.png", binary_mask((6, 6), (1, 3, 1, 3)))
    case = ImageMaskCase("a", "Tr", tmp_path / "src" / "a.png", [tmp_path / "src" / "a_mask.png"], "gray", BinaryMask())
    description = DatasetDescription("Broken", {0: "gray"}, {"background": 0}, ".png")  # label 1 not declared
    with pytest.raises(OutputVerificationError, match="verify_dataset_integrity rejected"):
        convert_dataset([case], description, tmp_path / "raw", 950, progress=False)
    assert leftovers(tmp_path / "raw") == []
    assert module.multiprocessing is pool_module


def test_overwrite_replaces_an_existing_dataset(tmp_path):
    from nnunet_ext.conversion.busi import convert_busi

    source = make_busi(tmp_path / "src", np.random.default_rng(0))
    out = convert_busi(source, tmp_path / "raw", progress=False)
    for name in ("normal (1).png", "normal (1)_mask.png"):
        (source / "Dataset_BUSI_with_GT" / "normal" / name).unlink()
    assert convert_busi(source, tmp_path / "raw", overwrite=True, progress=False) == out
    assert "imagesTr/normal_1_0000.png" not in listing(out)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset081_BUSI"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_help_lists_the_common_options(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("-i INPUT, --input INPUT", "-d DATASET_ID, --dataset-id DATASET_ID", "--output", "--overwrite"):
        assert option in result.stdout
    assert "$nnUNet_raw" in result.stdout


def test_script_converts_into_nnunet_raw_and_reports_errors(tmp_path):
    source = make_busi(tmp_path / "src", np.random.default_rng(0))
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw")}
    script = str(REPO / "dataset_conversion" / "Dataset081_BUSI.py")
    result = subprocess.run(
        [sys.executable, script, "-i", str(source), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'raw' / 'Dataset081_BUSI'}" in result.stdout
    (source / "Dataset_BUSI_with_GT" / "benign" / "benign (2)_mask.png").unlink()
    result = subprocess.run(
        [sys.executable, script, "-i", str(source), "-d", "181"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 2
    assert "benign (2).png: missing partner file" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset081_BUSI"]
