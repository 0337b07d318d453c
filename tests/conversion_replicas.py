"""Tiny replicas of the source datasets' layouts, quirks included, for converter tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image


def write_volume(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 3.0)) -> Path:
    """Write a ``(Z, Y, X)`` array as NIfTI with ``spacing`` (x, y, z)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def ct_volume(rng: np.random.Generator, shape=(3, 8, 8)) -> np.ndarray:
    return rng.integers(-1000, 1000, size=shape).astype(np.int16)


def label_volume(rng: np.random.Generator, max_label: int, shape=(3, 8, 8)) -> np.ndarray:
    return rng.integers(0, max_label + 1, size=shape).astype(np.uint8)


def write_image(path: Path, array: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return path


def binary_mask(shape=(20, 24), box=(4, 12, 5, 15), value=255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[box[0] : box[1], box[2] : box[3]] = value
    return mask


def make_isic(root: Path, rng: np.random.Generator) -> Path:
    """Official ISIC 2018 folders: 3 training, 1 validation, 1 test jpg; stray LICENSE/ATTRIBUTION files; one
    mask with 1/254 noise."""
    for split, count in (("Training", 3), ("Validation", 1), ("Test", 1)):
        images = root / f"ISIC2018_Task1-2_{split}_Input"
        masks = root / f"ISIC2018_Task1_{split}_GroundTruth"
        for index in range(count):
            case = f"ISIC_{split[:2]}{index:05d}"
            write_image(images / f"{case}.jpg", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), quality=95)
            mask = binary_mask()
            if split == "Training" and index == 0:
                mask[0, 0], mask[6, 7] = 1, 254
            write_image(masks / f"{case}_segmentation.png", mask)
        (images / "LICENSE.txt").write_text("license")
        (masks / "ATTRIBUTION.txt").write_text("attribution")
    return root


def make_busi(root: Path, rng: np.random.Generator) -> Path:
    """Kaggle BUSI: names with spaces/parentheses, an extra ``_mask_1``, an RGB-stored gray image, an empty normal."""
    base = root / "Dataset_BUSI_with_GT"
    gray = rng.integers(0, 256, (16, 20), dtype=np.uint8)
    write_image(base / "benign" / "benign (1).png", gray)
    write_image(base / "benign" / "benign (1)_mask.png", binary_mask((16, 20), (2, 6, 2, 6)))
    write_image(base / "benign" / "benign (1)_mask_1.png", binary_mask((16, 20), (10, 14, 12, 18)))
    write_image(base / "benign" / "benign (2).png", np.repeat(gray[..., None], 3, axis=-1))
    write_image(base / "benign" / "benign (2)_mask.png", binary_mask((16, 20), (4, 8, 4, 8)))
    write_image(base / "malignant" / "malignant (1).png", gray)
    write_image(base / "malignant" / "malignant (1)_mask.png", binary_mask((16, 20), (3, 9, 3, 9)))
    write_image(base / "normal" / "normal (1).png", gray)
    write_image(base / "normal" / "normal (1)_mask.png", np.zeros((16, 20), np.uint8))
    return root


def make_tn3k(root: Path, rng: np.random.Generator) -> Path:
    """TN3K: jpg images and jpg masks, trainval + test, two fold files over the trainval indices."""
    for split, count in (("trainval", 4), ("test", 1)):
        for index in range(count):
            write_image(root / f"{split}-image" / f"{index:04d}.jpg", rng.integers(0, 256, (24, 24), dtype=np.uint8))
            write_image(root / f"{split}-mask" / f"{index:04d}.jpg", binary_mask((24, 24), (4, 16, 6, 18)), quality=75)
    for fold, val in enumerate(([0, 1], [2, 3])):
        train = [i for i in range(4) if i not in val]
        (root / f"tn3k-trainval-fold{fold}.json").write_text(json.dumps({"train": train, "val": val}))
    return root


def make_ddti(root: Path, rng: np.random.Generator) -> Path:
    """DDTI's PNG release with uppercase ``.PNG`` suffixes and a category.csv."""
    base = root / "DDTI dataset" / "DDTI" / "1_or_data"
    for index in range(3):
        write_image(base / "image" / f"{index:04d}.PNG", rng.integers(0, 256, (16, 16), dtype=np.uint8), format="PNG")
        write_image(base / "mask" / f"{index:04d}.PNG", binary_mask((16, 16), (2, 9, 3, 10)), format="PNG")
    (root / "DDTI dataset" / "DDTI" / "category.csv").write_text("id,category\n0,1\n")
    return root


def make_acdc(root: Path, rng: np.random.Generator) -> Path:
    """ACDC database/: 3 training patients (ES frame varies) with Info.cfg, 4d, frames, gt; 2 testing patients,
    one with and one without gt files."""
    patients = {"training": {1: 12, 2: 9, 3: 14}, "testing": {101: 14, 102: 10}}
    for folder, es_frames in patients.items():
        for patient, es in es_frames.items():
            name = f"patient{patient:03d}"
            directory = root / "database" / folder / name
            directory.mkdir(parents=True)
            (directory / "Info.cfg").write_text(
                f"ED: 1\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"
            )
            four_d = sitk.GetImageFromArray(rng.normal(size=(2, 3, 8, 8)).astype(np.float32), isVector=False)
            sitk.WriteImage(four_d, str(directory / f"{name}_4d.nii.gz"))
            for frame in (1, es):
                write_volume(
                    directory / f"{name}_frame{frame:02d}.nii.gz", rng.normal(size=(3, 8, 8)).astype(np.float32)
                )
                if patient != 102:
                    write_volume(directory / f"{name}_frame{frame:02d}_gt.nii.gz", label_volume(rng, 3))
    return root


def make_flare(root: Path, rng: np.random.Generator, labelled=3, tuning=2, unlabelled=3, testing=1) -> Path:
    """FLARE2022: labelled training cases, unlabelled cases in two range folders, labelled tuning, testing."""
    training = root / "Training"
    for index in range(1, labelled + 1):
        write_volume(
            training / "FLARE22_LabeledCase50" / "images" / f"FLARE22_Tr_{index:04d}_0000.nii.gz", ct_volume(rng)
        )
        write_volume(
            training / "FLARE22_LabeledCase50" / "labels" / f"FLARE22_Tr_{index:04d}.nii.gz", label_volume(rng, 13)
        )
    for index in range(1, unlabelled + 1):
        folder = "FLARE22_UnlabeledCase1-1000" if index % 2 else "FLARE22_UnlabeledCase1001-2000"
        write_volume(training / folder / f"Case_{index:05d}_0000.nii.gz", ct_volume(rng))
    for index in range(1, tuning + 1):
        write_volume(root / "Tuning" / "images" / f"FLARETs_{index:04d}_0000.nii.gz", ct_volume(rng))
        write_volume(root / "Tuning" / "labels" / f"FLARETs_{index:04d}.nii.gz", label_volume(rng, 13))
    for index in range(1, testing + 1):
        write_volume(root / "Testing" / f"FLARETs_{index:04d}_0000.nii.gz", ct_volume(rng))
    return root


AMOS_LABELS = {
    "0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gall bladder",
    "5": "esophagus", "6": "liver", "7": "stomach", "8": "arota", "9": "postcava", "10": "pancreas",
    "11": "right adrenal gland", "12": "left adrenal gland", "13": "duodenum", "14": "bladder",
    "15": "prostate/uterus",
}  # fmt: skip


def make_amos(root: Path, rng: np.random.Generator) -> Path:
    """amos22/: dataset.json with the release's typos ('licence', 'arota'), CT and MRI ids in Tr/Va/Ts."""
    ids = {"training": [1, 5, 507], "validation": [8, 409, 410, 508], "test": [2, 600]}
    folders = {"training": ("imagesTr", "labelsTr"), "validation": ("imagesVa", "labelsVa"), "test": ("imagesTs", None)}
    entries = {}
    for key, numbers in ids.items():
        images, labels = folders[key]
        entries[key] = []
        for number in numbers:
            case = f"amos_{number:04d}"
            write_volume(root / images / f"{case}.nii.gz", ct_volume(rng))
            entry = {"image": f"./{images}/{case}.nii.gz"}
            if labels:
                write_volume(root / labels / f"{case}.nii.gz", label_volume(rng, 15))
                entry["label"] = f"./{labels}/{case}.nii.gz"
            entries[key].append(entry)
    dataset = {
        "name": "AMOS", "description": "replica", "licence": "CC-BY-SA 4.0", "release": "1.0 01/05/2022",
        "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": AMOS_LABELS,
        "numTraining": 3, "numValidation": 4, "numTest": 2, **entries,
    }  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return root


SYNAPSE_ALL = (*range(1, 11), *range(21, 41))


def make_btcv(root: Path, rng: np.random.Generator) -> Path:
    """RawData/Training/{img,label} for the 30 labelled cases (13 labels) and two Testing volumes."""
    base = root / "RawData"
    for number in SYNAPSE_ALL:
        write_volume(base / "Training" / "img" / f"img{number:04d}.nii.gz", ct_volume(rng, (2, 6, 6)))
        write_volume(base / "Training" / "label" / f"label{number:04d}.nii.gz", label_volume(rng, 13, (2, 6, 6)))
    for number in (61, 62):
        write_volume(base / "Testing" / "img" / f"img{number:04d}.nii.gz", ct_volume(rng, (2, 6, 6)))
    return root


def make_transunet(root: Path, rng: np.random.Generator) -> Path:
    """train_npz slices (float32 image in [0, 1], float32 label 0..8), test_vol_h5 volumes, list files with a
    trailing newline under lists/lists_Synapse."""
    import h5py

    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    lines = []
    for case, depth in (("case0005", 3), ("case0006", 2)):
        for index in range(depth):
            name = f"{case}_slice{index:03d}"
            image = rng.random((6, 6), dtype=np.float32)
            label = rng.integers(0, 9, (6, 6)).astype(np.float32)
            np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label)
            lines.append(name)
    for case in ("case0001", "case0002"):
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as handle:
            handle["image"] = rng.random((2, 6, 6), dtype=np.float32)
            handle["label"] = rng.integers(0, 9, (2, 6, 6)).astype(np.float32)
    lists = root / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(lines) + "\n")
    (lists / "test_vol.txt").write_text("case0001\ncase0002\n")
    return root


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def read_volume(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def listing(folder: Path) -> list[str]:
    """Every file below ``folder`` as a sorted relative path."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def leftovers(output: Path) -> list[str]:
    """Anything a failed conversion left in the output root (there must be nothing)."""
    return sorted(p.name for p in output.iterdir()) if output.exists() else []


def problems_by_file(error) -> dict[str, type]:
    """``{file name: problem class}`` of an ``InvalidSourceError``."""
    return {Path(problem.path).name: type(problem) for problem in error.problems}
