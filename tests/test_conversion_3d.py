"""3-D converters (Synapse 017, FLARE22 022, ACDC 027, AMOS 218/219) on tiny replicas of their source layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conversion_replicas import (
    label_volume,
    leftovers,
    listing,
    make_acdc,
    make_amos,
    make_btcv,
    make_flare,
    make_transunet,
    problems_by_file,
    read_volume,
    write_volume,
)

from nnunet_ext.conversion import amos
from nnunet_ext.conversion.acdc import convert_acdc
from nnunet_ext.conversion.errors import (
    ChannelCountError,
    DatasetExistsError,
    InvalidSourceError,
    MissingPartnerError,
    SizeMismatchError,
    UnexpectedLabelError,
    UnreadableFileError,
)
from nnunet_ext.conversion.flare import convert_flare
from nnunet_ext.conversion.synapse import BTCV_ORGANS, TEST_CASES, TRAIN_CASES, convert_synapse


@pytest.fixture
def rng():
    return np.random.default_rng(1)


def test_synapse_btcv_split_remap_and_unlabeled(tmp_path, rng):
    source = make_btcv(tmp_path / "src", rng)
    out = convert_synapse(source, tmp_path / "raw", unlabeled=True, progress=False)
    files = listing(out)
    assert [f for f in files if f.startswith("imagesTr/")] == [f"imagesTr/case{n:04d}_0000.nii.gz" for n in TRAIN_CASES]
    assert [f for f in files if f.startswith("labelsTs/")] == [
        f"labelsTs/case{n:04d}.nii.gz" for n in sorted(TEST_CASES)
    ]
    assert [f for f in files if f.startswith("imagesUl/")] == [
        "imagesUl/case0061_0000.nii.gz",
        "imagesUl/case0062_0000.nii.gz",
    ]
    raw = source / "RawData" / "Training"
    assert (out / "imagesTr" / "case0005_0000.nii.gz").read_bytes() == (raw / "img" / "img0005.nii.gz").read_bytes()
    original = read_volume(raw / "label" / "label0001.nii.gz")
    samed = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}  # SAMed's 13 -> 8 remap
    expected = np.vectorize(lambda v: samed.get(int(v), 0))(original)
    np.testing.assert_array_equal(read_volume(out / "labelsTs" / "case0001.nii.gz"), expected)
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"} and dataset["numTraining"] == 18
    assert list(dataset["labels"]) == ["background", "spleen", "right_kidney", "left_kidney", "gallbladder",
                                       "liver", "stomach", "aorta", "pancreas"]  # fmt: skip

    all13 = convert_synapse(source, tmp_path / "raw", dataset_id=117, organs=BTCV_ORGANS, progress=False)
    np.testing.assert_array_equal(read_volume(all13 / "labelsTs" / "case0001.nii.gz"), original)
    assert len(json.loads((all13 / "dataset.json").read_text())["labels"]) == 14


def test_synapse_btcv_bad_inputs(tmp_path, rng):
    source = make_btcv(tmp_path / "src", rng)
    raw = source / "RawData" / "Training"
    (raw / "label" / "label0005.nii.gz").unlink()
    write_volume(raw / "label" / "label0006.nii.gz", np.full((2, 6, 6), 14, np.uint8))
    write_volume(raw / "label" / "label0007.nii.gz", label_volume(rng, 13, (3, 6, 6)))
    write_volume(raw / "label" / "label0009.nii.gz", label_volume(rng, 13, (2, 6, 6)), spacing=(1.0, 1.0, 1.0))
    (raw / "img" / "img0010.nii.gz").write_bytes(b"garbage")
    with pytest.raises(InvalidSourceError) as caught:
        convert_synapse(source, tmp_path / "raw", progress=False)
    assert problems_by_file(caught.value) == {
        "label0005.nii.gz": MissingPartnerError,
        "label0006.nii.gz": UnexpectedLabelError,
        "label0007.nii.gz": SizeMismatchError,
        "label0009.nii.gz": SizeMismatchError,
        "img0010.nii.gz": UnreadableFileError,
    }
    assert leftovers(tmp_path / "raw") == []


def test_synapse_transunet_release(tmp_path, rng):
    import h5py

    source = make_transunet(tmp_path / "src", rng)
    out = convert_synapse(source, tmp_path / "raw", progress=False)
    assert listing(out)[2:] == ["imagesTr/case0005_0000.nii.gz", "imagesTr/case0006_0000.nii.gz",
                                "imagesTs/case0001_0000.nii.gz", "imagesTs/case0002_0000.nii.gz",
                                "labelsTr/case0005.nii.gz", "labelsTr/case0006.nii.gz",
                                "labelsTs/case0001.nii.gz", "labelsTs/case0002.nii.gz"]  # fmt: skip
    slices = [np.load(source / "train_npz" / f"case0005_slice{k:03d}.npz") for k in range(3)]
    np.testing.assert_array_equal(
        read_volume(out / "imagesTr" / "case0005_0000.nii.gz"), np.stack([s["image"] for s in slices])
    )
    np.testing.assert_array_equal(
        read_volume(out / "labelsTr" / "case0005.nii.gz"), np.stack([s["label"] for s in slices])
    )
    with h5py.File(source / "test_vol_h5" / "case0001.npy.h5") as handle:
        np.testing.assert_array_equal(read_volume(out / "labelsTs" / "case0001.nii.gz"), handle["label"][:])
        test_image = handle["image"][:]
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "noNorm"}

    hu = convert_synapse(source, tmp_path / "raw", dataset_id=217, intensity="hu", progress=False)
    np.testing.assert_allclose(read_volume(hu / "imagesTs" / "case0001_0000.nii.gz"), test_image * 400 - 125, rtol=1e-6)
    assert json.loads((hu / "dataset.json").read_text())["channel_names"] == {"0": "CT"}


def test_synapse_transunet_bad_inputs(tmp_path, rng):
    source = make_transunet(tmp_path / "src", rng)
    (source / "train_npz" / "case0006_slice001.npz").unlink()
    np.savez(source / "train_npz" / "case0005_slice001.npz", img=np.zeros((6, 6), np.float32))
    with pytest.raises(InvalidSourceError) as caught:
        convert_synapse(source, tmp_path / "raw", progress=False)
    assert problems_by_file(caught.value) == {
        "case0006_slice001.npz": MissingPartnerError,
        "case0005_slice001.npz": UnreadableFileError,
    }
    assert "lacks the array key(s) ['image', 'label']" in str(caught.value)
    assert leftovers(tmp_path / "raw") == []


def test_acdc_identical_to_nnunets_own_converter(tmp_path, rng, monkeypatch):
    from nnunetv2.dataset_conversion import Dataset027_ACDC as reference

    source = make_acdc(tmp_path / "src", rng)
    ours = convert_acdc(source, tmp_path / "raw", progress=False)
    # nnU-Net 2.8.1's make_out_dirs calls nnUNet_raw.replace(), which its lazy _EnvPath lacks: give it a str.
    monkeypatch.setattr(reference, "nnUNet_raw", str(tmp_path / "reference"))
    reference.convert_acdc(str(source / "database"), 27)
    theirs = tmp_path / "reference" / "Dataset027_ACDC"
    assert listing(ours) == [*listing(theirs), "splits_final.json"]
    for name in listing(theirs):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    assert "imagesTr/patient003_frame14_0000.nii.gz" in listing(ours)
    assert "imagesTs/patient102_frame10_0000.nii.gz" in listing(ours)
    splits = json.loads((ours / "splits_final.json").read_text())
    assert splits == reference.create_ACDC_split(str(theirs / "labelsTr"))
    for fold in splits:
        assert {c[:10] for c in fold["train"]}.isdisjoint({c[:10] for c in fold["val"]})

    with_labels = convert_acdc(source, tmp_path / "raw", dataset_id=127, with_test_labels=False, progress=False)
    assert "labelsTs" not in {name.split("/")[0] for name in listing(with_labels)}


def test_acdc_bad_inputs_and_test_labels(tmp_path, rng):
    source = make_acdc(tmp_path / "src", rng)
    with pytest.raises(InvalidSourceError) as caught:
        convert_acdc(source, tmp_path / "raw", with_test_labels=True, progress=False)
    assert problems_by_file(caught.value) == {
        "patient102_frame01.nii.gz": MissingPartnerError,
        "patient102_frame10.nii.gz": MissingPartnerError,
    }
    patient = source / "database" / "training" / "patient002"
    write_volume(patient / "patient002_frame09_gt.nii.gz", np.full((3, 8, 8), 4, np.uint8))
    shutil.copyfile(patient / "patient002_4d.nii.gz", patient / "patient002_frame01.nii.gz")
    with pytest.raises(InvalidSourceError) as caught:
        convert_acdc(source, tmp_path / "raw", progress=False)
    assert problems_by_file(caught.value) == {
        "patient002_frame09_gt.nii.gz": UnexpectedLabelError,
        "patient002_frame01.nii.gz": ChannelCountError,
    }
    assert leftovers(tmp_path / "raw") == []


def test_acdc_npz_variant(tmp_path, rng):
    source = tmp_path / "ACDC"
    for folder, patient in (("train", 1), ("valid", 2), ("test", 3)):
        (source / folder).mkdir(parents=True)
        for phase in ("ED", "ES"):
            if folder == "test":
                volume = {"img": rng.random((3, 8, 8)), "label": label_volume(rng, 3, (3, 8, 8))}
                np.savez(source / folder / f"case_{patient:03d}_volume_{phase}.npz", **volume)
                continue
            for index in range(2):
                slice_ = {"img": rng.random((8, 8)), "label": label_volume(rng, 3, (8, 8))}
                np.savez(source / folder / f"case_{patient:03d}_slice{phase}_{index}.npz", **slice_)
    out = convert_acdc(source, tmp_path / "raw", layout="npz", progress=False)
    assert [f for f in listing(out) if f.startswith("images")] == [
        "imagesTr/patient001_ED_0000.nii.gz", "imagesTr/patient001_ES_0000.nii.gz",
        "imagesTr/patient002_ED_0000.nii.gz", "imagesTr/patient002_ES_0000.nii.gz",
        "imagesTs/patient003_ED_0000.nii.gz", "imagesTs/patient003_ES_0000.nii.gz",
    ]  # fmt: skip
    slices = [np.load(source / "valid" / f"case_002_sliceES_{k}.npz") for k in range(2)]
    np.testing.assert_array_equal(
        read_volume(out / "labelsTr" / "patient002_ES.nii.gz"), np.stack([s["label"] for s in slices])
    )
    splits = json.loads((out / "splits_final.json").read_text())
    assert len(splits) == 5 and all(len(fold["val"]) % 2 == 0 for fold in splits)


def test_flare_full_protocol(tmp_path, rng):
    source = make_flare(tmp_path / "FLARE2022", rng)
    out = convert_flare(source, tmp_path / "raw", progress=False)
    files = listing(out)
    assert [f for f in files if f.startswith("imagesTr/")] == [
        "imagesTr/FLARE22_Tr_0001_0000.nii.gz", "imagesTr/FLARE22_Tr_0002_0000.nii.gz",
        "imagesTr/FLARE22_Tr_0003_0000.nii.gz", "imagesTr/FLARETune_0001_0000.nii.gz",
        "imagesTr/FLARETune_0002_0000.nii.gz",
    ]  # fmt: skip
    assert [f for f in files if f.startswith("imagesUl/")] == [f"imagesUl/Case_{i:05d}_0000.nii.gz" for i in (1, 2, 3)]
    assert [f for f in files if f.startswith("imagesTs/")] == ["imagesTs/FLARETs_0001_0000.nii.gz"]
    tuning = source / "Tuning" / "labels" / "FLARETs_0002.nii.gz"
    assert (out / "labelsTr" / "FLARETune_0002.nii.gz").read_bytes() == tuning.read_bytes()
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == 5 and len(dataset["labels"]) == 14 and dataset["channel_names"] == {"0": "CT"}
    assert (
        "FLARETune_0001,imagesTr,Tuning/images/FLARETs_0001_0000.nii.gz;Tuning/labels/FLARETs_0001.nii.gz"
        in (out / "case_ids.csv").read_text()
    )

    with pytest.raises(DatasetExistsError):
        convert_flare(source, tmp_path / "raw", progress=False)
    with pytest.raises(DatasetExistsError, match="already uses dataset id 22"):
        convert_flare(source, tmp_path / "raw", name="Other", progress=False)
    (source / "Training" / "FLARE22_LabeledCase50" / "labels" / "FLARE22_Tr_0002.nii.gz").unlink()
    with pytest.raises(InvalidSourceError) as caught:
        convert_flare(source, tmp_path / "raw", overwrite=True, progress=False)
    assert problems_by_file(caught.value) == {"FLARE22_Tr_0002_0000.nii.gz": MissingPartnerError}
    assert listing(out) == files  # the existing dataset is untouched


def test_flare_guidednet_protocol(tmp_path, rng):
    source = make_flare(tmp_path / "FLARE2022", rng, labelled=4, tuning=3, unlabelled=4, testing=1)
    out = convert_flare(
        source, tmp_path / "raw", protocol="guidednet", counts=(3, 2, 1), unlabeled_count=2, progress=False
    )
    protocol = json.loads((out / "guidednet_protocol.json").read_text())
    assert protocol["counts"] == {"train": 3, "val": 2, "test": 1, "unlabeled": 2}
    labelled_pool = [f"FLARE22_Tr_{i:04d}" for i in (1, 2, 3, 4)] + ["FLARETune_0001", "FLARETune_0002"]
    assert sorted(protocol["train"] + protocol["val"] + protocol["test"]) == sorted(labelled_pool)
    assert json.loads((out / "splits_final.json").read_text()) == [{"train": protocol["train"], "val": protocol["val"]}]
    files = listing(out)
    assert sorted(f.split("/")[1][: -len("_0000.nii.gz")] for f in files if f.startswith("imagesTr/")) == sorted(
        protocol["train"] + protocol["val"]
    )
    assert [f for f in files if f.startswith("labelsTs/")] == [f"labelsTs/{protocol['test'][0]}.nii.gz"]
    assert [f for f in files if f.startswith("imagesUl/")] == [
        "imagesUl/Case_00001_0000.nii.gz",
        "imagesUl/Case_00002_0000.nii.gz",
    ]


def test_amos_task1_task2_and_guidednet(tmp_path, rng):
    source = make_amos(tmp_path / "amos22", rng)
    assert amos.main(["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"], task=1) == 0
    task1 = tmp_path / "raw" / "Dataset218_AMOS2022_postChallenge_task1"
    assert listing(task1) == [
        "dataset.json",
        *[f"imagesTr/amos_{n:04d}_0000.nii.gz" for n in (1, 5, 8, 409)],
        "imagesTs/amos_0002_0000.nii.gz",
        *[f"labelsTr/amos_{n:04d}.nii.gz" for n in (1, 5, 8, 409)],
    ]
    assert (task1 / "labelsTr" / "amos_0008.nii.gz").read_bytes() == (
        source / "labelsVa" / "amos_0008.nii.gz"
    ).read_bytes()
    dataset = json.loads((task1 / "dataset.json").read_text())
    assert dataset["labels"]["arota"] == 8 and dataset["licence"] == "CC-BY-SA 4.0"
    assert (
        dataset["channel_names"] == {"0": "CT"} and dataset["overwrite_image_reader_writer"] == "NibabelIOWithReorient"
    )

    assert amos.main(["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"], task=2) == 0
    task2 = tmp_path / "raw" / "Dataset219_AMOS2022_postChallenge_task2"
    assert len([f for f in listing(task2) if f.startswith("imagesTr/")]) == 7
    assert json.loads((task2 / "dataset.json").read_text())["channel_names"] == {"0": "either_CT_or_MR"}

    lists = tmp_path / "lists"
    lists.mkdir()
    for role, ids in (("train", "amos_0001\r\namos_0008"), ("val", "amos_0005"), ("test", "amos_0409")):
        (lists / f"{role}.txt").write_text(ids)
    argv = ["-i", str(source), "--output", str(tmp_path / "raw"), "-d", "318", "--no-progress"]
    assert amos.main([*argv, "--protocol", "guidednet", "--split-lists", str(lists)], task=1) == 0
    guided = tmp_path / "raw" / "Dataset318_AMOS2022_postChallenge_task1"
    assert json.loads((guided / "splits_final.json").read_text()) == [
        {"train": ["amos_0001", "amos_0008"], "val": ["amos_0005"]}
    ]
    assert [f for f in listing(guided) if f.startswith("labelsTs/")] == ["labelsTs/amos_0409.nii.gz"]


def test_amos_bad_inputs(tmp_path, rng):
    source = make_amos(tmp_path / "amos22", rng)
    (source / "labelsVa" / "amos_0008.nii.gz").unlink()
    write_volume(source / "labelsTr" / "amos_0005.nii.gz", np.full((3, 8, 8), 16, np.uint8))
    with pytest.raises(InvalidSourceError) as caught:
        amos.convert_amos(source, tmp_path / "raw", progress=False)
    assert problems_by_file(caught.value) == {
        "amos_0008.nii.gz": MissingPartnerError,
        "amos_0005.nii.gz": UnexpectedLabelError,
    }
    assert leftovers(tmp_path / "raw") == []
