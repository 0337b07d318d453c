"""Bad input never passes silently (issue 18): each case names the file and the problem, exits with status 2 and
writes nothing; results get the modes the user's umask gives."""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import nibabel
import numpy as np
import pytest
from conversion_replicas import (
    leftovers,
    listing,
    make_acdc,
    make_amos,
    make_btcv,
    make_busi,
    make_tn3k,
    make_transunet,
    read_volume,
    write_volume,
)
from nibabel.filebasedimages import ImageFileError
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from PIL import Image
from test_evaluation import make_3d_dataset

from nnunet_ext.cli import evaluate as evaluate_cli
from nnunet_ext.conversion import acdc, amos, busi, flare, isic, mni152, oct, synapse, thyroid
from nnunet_ext.conversion import cases as cases_module
from nnunet_ext.conversion.busi import convert_busi
from nnunet_ext.conversion.errors import InvalidDatasetNameError
from nnunet_ext.conversion.labels import parse_label_map
from nnunet_ext.data.atomic import atomic_directory, atomic_file
from nnunet_ext.data.file_checks import InvalidFileError
from nnunet_ext.evaluation.folders import read_segmentation
from nnunet_ext.ssl.raw_pool import PoolValidationError, find_pool_cases, read_pool_case
from nnunet_ext.synthesis.images import read_case
from nnunet_ext.synthesis.source import SynthesisInputError


# ------------------------------------------------------------------------ 7: modes of what we write
@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_results_get_the_modes_the_umask_gives(tmp_path):
    with umask(0o022):
        with atomic_directory(tmp_path / "folder") as staging:
            (staging / "file.txt").write_text("x")
        with atomic_file(tmp_path / "single.json") as temporary:
            temporary.write_text("{}")
        dataset = convert_busi(make_busi(tmp_path / "src", np.random.default_rng(0)), tmp_path / "raw", progress=False)
    assert mode(tmp_path / "folder") == 0o755 and mode(tmp_path / "single.json") == 0o644
    assert mode(dataset) == 0o755 and mode(dataset / "imagesTr") == 0o755
    assert {mode(dataset / name) for name in listing(dataset)} == {0o644}
    with umask(0o027), atomic_directory(tmp_path / "private") as staging:
        pass
    assert mode(tmp_path / "private") == 0o750


# ------------------------------------------------------------- 1, 2: truncated files and non-finite values
def truncate(path: Path) -> Path:
    """Cut a file in half (a download or copy that stopped midway)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def convert_fails(main, source: Path, output: Path, capsys, *options: str) -> str:
    """Run a converter's ``main``; it must exit with 2 and write nothing. Returns its stderr."""
    code = main(["-i", str(source), "--output", str(output), "--no-progress", *options])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert leftovers(output) == []
    assert "Traceback" not in stderr
    return stderr


REPO = Path(__file__).resolve().parents[1]
ACDC_PATIENT = Path("database/training/patient001")


@pytest.mark.parametrize("name", ["patient001_frame01.nii.gz", "patient001_frame01_gt.nii.gz"])
def test_acdc_refuses_a_truncated_image_or_label(tmp_path, capsys, name):
    source = make_acdc(tmp_path / "src", np.random.default_rng(0))
    broken = truncate(source / ACDC_PATIENT / name)
    stderr = convert_fails(acdc.main, source, tmp_path / "raw", capsys)
    assert f"{broken}: unreadable file: truncated or corrupt compressed data" in stderr


def test_synapse_refuses_truncated_images_including_the_unlabeled_pool(tmp_path, capsys):
    source = make_btcv(tmp_path / "src", np.random.default_rng(0))
    image = truncate(source / "RawData" / "Training" / "img" / "img0005.nii.gz")
    pool_image = truncate(source / "RawData" / "Testing" / "img" / "img0061.nii.gz")
    stderr = convert_fails(synapse.main, source, tmp_path / "raw", capsys, "--unlabeled")
    assert f"{image}: unreadable file: truncated" in stderr and f"{pool_image}: unreadable file: truncated" in stderr


def test_transunet_npz_slice_that_is_truncated_is_refused(tmp_path, capsys):
    source = make_transunet(tmp_path / "src", np.random.default_rng(0))
    broken = truncate(source / "train_npz" / "case0005_slice001.npz")
    stderr = convert_fails(synapse.main, source, tmp_path / "raw", capsys)
    assert f"{broken}: unreadable file:" in stderr


def test_converter_refuses_an_image_with_infinite_voxels(tmp_path, capsys):
    source = make_acdc(tmp_path / "src", np.random.default_rng(0))
    frame = source / ACDC_PATIENT / "patient001_frame01.nii.gz"
    volume = nibabel.load(frame)
    voxels = np.asarray(volume.dataobj)
    voxels[1, 2, 0], voxels[0, 0, 0] = np.inf, -np.inf
    nibabel.save(nibabel.Nifti1Image(voxels, volume.affine, volume.header), frame)  # SimpleITK writes inf as 0
    stderr = convert_fails(acdc.main, source, tmp_path / "raw", capsys)
    assert f"{frame}: non-finite values: 2 voxel(s) are NaN or infinite" in stderr


def pool_files(tmp_path: Path) -> tuple[Path, Path]:
    """A truncated ``.nii.gz`` and an ``.mha`` with one +inf voxel (SimpleITK reads NIfTI's inf as 0)."""
    volume = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    cut = truncate(write_volume(tmp_path / "nii" / "cut_0000.nii.gz", volume))
    volume[1, 1, 1] = np.inf
    return cut, write_volume(tmp_path / "mha" / "inf_0000.mha", volume)


def test_pool_refuses_truncated_files_and_infinite_voxels(tmp_path):
    cut, infinite = pool_files(tmp_path)
    [cut_case] = find_pool_cases(cut.parent, ".nii.gz", 1)
    with pytest.raises(PoolValidationError, match=r"cut_0000\.nii\.gz: truncated or corrupt compressed data"):
        read_pool_case(cut_case, SimpleITKIO, 1, training_is_2d=False)
    [infinite_case] = find_pool_cases(infinite.parent, ".mha", 1)
    with pytest.raises(PoolValidationError, match=r"inf_0000\.mha: 1 voxel\(s\) are NaN or infinite"):
        read_pool_case(infinite_case, SimpleITKIO, 1, training_is_2d=False)


def test_synthesis_refuses_sources_with_infinite_voxels_or_truncated_files(tmp_path):
    cut, infinite = pool_files(tmp_path)
    source = SimpleNamespace(reader_class=SimpleITKIO)
    with pytest.raises(SynthesisInputError, match=r"cut_0000\.nii\.gz: truncated"):
        read_case(source, (str(cut),))
    with pytest.raises(SynthesisInputError, match=r"inf_0000\.mha: 1 voxel\(s\) are NaN or infinite"):
        read_case(source, (str(infinite),))


def test_evaluation_refuses_a_truncated_prediction(tmp_path):
    cut, _ = pool_files(tmp_path)
    with pytest.raises(InvalidFileError, match=r"cut_0000\.nii\.gz: truncated"):
        read_segmentation(SimpleITKIO(), cut)


# ------------------------------------------------------------------------------------- 3: TN3K fold files
@pytest.mark.parametrize(
    ("fold_files", "message"),
    [
        ({"fold1": {"train": [0, 1, 2], "val": [-1]}}, "'val' indices [-1] are outside 0..3"),
        ({"fold1": {"train": [0, 1, 9], "val": [2]}}, "'train' indices [9] are outside 0..3"),
        ({"fold0": {"train": [0, 1, 2], "val": [2, 3]}}, "indices [2] are in both 'train' and 'val'"),
        ({"fold0": {"train": [0, 0, 1], "val": [2]}}, "'train' lists indices [0] more than once"),
        ({"fold0": {"train": ["0", 1], "val": [2]}}, "'train' must be a non-empty list of integer image indices"),
        ({"fold0": {"train": [0, 1]}}, 'expected {"train": [indices], "val": [indices]}'),
        ({"fold1": None, "fold2": {"train": [0], "val": [1]}}, "tn3k-trainval-fold1.json missing"),
    ],
    ids=["negative", "out-of-range", "in-both", "repeated", "not-int", "no-val", "missing-fold"],
)
def test_tn3k_fold_files_are_validated(tmp_path, capsys, fold_files, message):
    source = make_tn3k(tmp_path / "src", np.random.default_rng(0))
    for name, content in fold_files.items():
        path = source / f"tn3k-trainval-{name}.json"
        if content is None:
            path.unlink()
        else:
            path.write_text(json.dumps(content))
    stderr = convert_fails(thyroid.main, source, tmp_path / "raw", capsys)
    assert message in stderr


# ------------------------------------------------------------------------------------------ 6: dataset names
CONVERTER_MAINS = {
    "ACDC": acdc.main,
    "AMOS task 1": amos.main,
    "AMOS task 2": functools.partial(amos.main, task=2),
    "BUSI": busi.main,
    "FLARE22": flare.main,
    "ISIC": isic.main,
    "MNI152": mni152.main,
    "OCT": oct.main,
    "Synapse": synapse.main,
    "Thyroid": thyroid.main,
}


@pytest.mark.parametrize("main", CONVERTER_MAINS.values(), ids=CONVERTER_MAINS)
@pytest.mark.parametrize("name", ["a/b", "../../../escape", "with space", ""])
def test_dataset_names_that_are_not_one_folder_name_are_refused(tmp_path, capsys, main, name):
    (tmp_path / "src").mkdir()
    with pytest.raises(SystemExit) as exit_status:
        main(["-i", str(tmp_path / "src"), "--output", str(tmp_path / "raw" / "inner"), "--name", name])
    assert exit_status.value.code == 2
    assert f"dataset name {name!r} is not allowed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_dataset_name_is_checked_by_the_python_api_too(tmp_path):
    source = make_busi(tmp_path / "src", np.random.default_rng(0))
    with pytest.raises(InvalidDatasetNameError, match="not allowed"):
        convert_busi(source, tmp_path / "raw", name="../escape", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ------------------------------------------------------------------------------- 4: evaluate -o DIR
def evaluate(references: Path, predictions: Path, *options: str) -> None:
    evaluate_cli.main(["-ref", str(references), "-pred", str(predictions), "-np", "0", "--metrics", "dice", *options])


def test_evaluate_output_folder_keeps_the_users_files(tmp_path):
    references, predictions = make_3d_dataset(tmp_path)
    output = tmp_path / "results"
    evaluate(references, predictions, "-o", str(output))
    (output / "notes.txt").write_text("my notes")
    (output / "figures").mkdir()
    inode = output.stat().st_ino
    evaluate(references, predictions, "-o", str(output), "--protocol", "transunet-synapse")
    assert output.stat().st_ino == inode  # the folder itself was not replaced
    assert (output / "notes.txt").read_text() == "my notes" and (output / "figures").is_dir()
    assert json.loads((output / "metrics.json").read_text())["protocol"] == "transunet-synapse"
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]  # no staging left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    evaluate(references, predictions, "-o", str(empty))
    assert (empty / "metrics.json").is_file()


# ---------------------------------------------------------------------- 5: operating-system errors, bad options
def test_full_disk_is_one_message_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    def no_space(array, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cases_module, "write_png", no_space)
    stderr = convert_fails(busi.main, make_busi(tmp_path / "src", np.random.default_rng(0)), tmp_path / "raw", capsys)
    assert "No space left on device" in stderr and "_0000.png" in stderr


def test_unwritable_output_is_one_message(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    source = make_busi(tmp_path / "src", np.random.default_rng(0))
    stderr = convert_fails(busi.main, source, tmp_path / "file" / "raw", capsys)
    assert str(tmp_path / "file") in stderr


def test_negative_workers_are_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        busi.main(["-i", str(tmp_path), "--output", str(tmp_path / "raw"), "--workers", "-2"])
    assert exit_status.value.code == 2
    assert "argument --workers: must be at least 1, got -2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: data.update(labels=["background", "spleen"]), '"labels" must map label values to names'),
        (lambda data: data["training"][0].pop("image"), '"training" must be a list of'),
        (lambda data: data.update(test="imagesTs"), '"test" must be a list of'),
    ],
    ids=["labels-list", "entry-without-image", "test-not-a-list"],
)
def test_malformed_amos_dataset_json_is_named(tmp_path, capsys, edit, message):
    source = make_amos(tmp_path / "src", np.random.default_rng(0))
    data = json.loads((source / "dataset.json").read_text())
    edit(data)
    (source / "dataset.json").write_text(json.dumps(data))
    stderr = convert_fails(amos.main, source, tmp_path / "raw", capsys)
    assert f"{source / 'dataset.json'}: {message}" in stderr


def test_any_failure_of_nnunets_integrity_check_is_one_message(tmp_path, capsys, monkeypatch):
    from nnunetv2.experiment_planning import verify_dataset_integrity

    def unreadable(folder, num_processes):
        raise ImageFileError(f"Cannot work out file type of {folder}/imagesTr/amos_0001_0000.nii.gz")

    monkeypatch.setattr(verify_dataset_integrity, "verify_dataset_integrity", unreadable)
    stderr = convert_fails(amos.main, make_amos(tmp_path / "src", np.random.default_rng(0)), tmp_path / "raw", capsys)
    assert "verify_dataset_integrity rejected the converted dataset (Cannot work out file type" in stderr


# ----------------------------------------------------------------- 8: warnings and clear errors on odd input
def test_acdc_with_fewer_than_five_patients_warns_about_empty_folds(tmp_path, capsys):
    source = make_acdc(tmp_path / "src", np.random.default_rng(0))
    assert acdc.main(["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]) == 0
    stderr = capsys.readouterr().err
    assert (
        "warning: only 3 training patient(s): folds 3, 4 of the 5-fold splits_final.json have no validation" in stderr
    )


@pytest.mark.parametrize(
    ("label_map", "message"),
    [
        ("background=0;lesion=128;lesion=255", "label 'lesion' is given twice; list its values as alternatives"),
        ("background=0;other=300", "label 'other': value 300 is not 0..255"),
        ("background=0;a=1;b=1", "value 1 is given for both 'a' and 'b'"),
        ("missing.json", "label map file missing.json not found"),
    ],
    ids=["repeated-name", "above-255", "value-twice", "missing-json"],
)
def test_label_map_errors_are_clear(tmp_path, capsys, label_map, message):
    with pytest.raises(SystemExit) as exit_status:
        oct.main(["-i", str(tmp_path), "--output", str(tmp_path / "raw"), "--label-map", label_map])
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err


def test_label_map_file_with_a_repeated_name_is_refused(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"background": 0, "lesion": 128, "lesion": 255}')
    with pytest.raises(ValueError, match=r"labels\.json: label\(s\) \['lesion'\] given twice"):
        parse_label_map(str(path))


def test_evaluate_warns_about_undefined_prediction_labels_and_extra_predictions(tmp_path, capsys):
    references, predictions = make_3d_dataset(tmp_path)
    volume = read_volume(predictions / "case_1.nii.gz")
    volume[0, 0, 0] = 7
    write_volume(predictions / "case_1.nii.gz", volume, (1.0, 1.0, 2.0))
    write_volume(predictions / "extra.nii.gz", volume, (1.0, 1.0, 2.0))
    with pytest.raises(SystemExit, match=r"no reference .* for extra\.nii\.gz \(pass --chill"):
        evaluate(references, predictions)
    evaluate(references, predictions, "--chill")
    stderr = capsys.readouterr().err
    assert "warning: predictions hold label values the dataset does not define [0, 1, 2] (they count as " in stderr
    assert f"{predictions / 'case_1.nii.gz'}: [7]" in stderr
    assert "warning: no reference in" in stderr and "for extra.nii.gz: not evaluated" in stderr
    summary = json.loads((predictions / "ext_evaluation_nnunet" / "metrics.json").read_text())
    assert [case["case"] for case in summary["metric_per_case"]] == ["case_0", "case_1", "case_2"]


def test_evaluate_names_a_malformed_dataset_json(tmp_path, capsys):
    references, predictions = make_3d_dataset(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit) as exit_status:
        evaluate(references, predictions, "-djfile", str(broken))
    assert exit_status.value.code == 2
    assert f"{broken}: not valid JSON" in capsys.readouterr().err
    broken.write_text('{"name": "no labels"}')
    with pytest.raises(SystemExit, match=r"broken\.json: not an nnU-Net dataset\.json \(no \"labels\" table\)"):
        evaluate(references, predictions, "-djfile", str(broken))


# ------------------------------------------------------------------------------------------- 10: help texts
COMMANDS = {
    "nnUNetv2_ext_demo": "nnunet_ext.cli.demo",
    "nnUNetv2_ext_benchmark": "nnunet_ext.cli.benchmark",
    "nnUNetv2_ext_evaluate": "nnunet_ext.cli.evaluate",
    "nnUNetv2_ext_compare": "nnunet_ext.cli.compare",
    "nnUNetv2_ext_preprocess_unlabeled": "nnunet_ext.cli.preprocess_unlabeled",
    "nnUNetv2_ext_ssl_split": "nnunet_ext.cli.ssl_split",
    "nnUNetv2_ext_synthesize": "nnunet_ext.cli.synthesize",
    "nnUNetv2_ext_convert_official_weights": "nnunet_ext.cli.convert_official_weights",
    **{script.stem: f"dataset_conversion/{script.name}" for script in sorted(REPO.glob("dataset_conversion/*.py"))},
}
_HELP = """
import runpy, sys, time
start = time.perf_counter()
sys.argv = [{name!r}, "--help"]
try:
    runpy.run_path({target!r}, run_name="__main__") if {target!r}.endswith(".py") else __import__({target!r},
        fromlist=["main"]).main()
except SystemExit as exit_status:
    assert exit_status.code in (0, None), exit_status.code
print("TIMING", time.perf_counter() - start, "torch" in sys.modules)
"""


@pytest.mark.parametrize(("name", "target"), COMMANDS.items(), ids=COMMANDS)
def test_help_is_plain_and_answers_without_importing_torch(name, target):
    code = _HELP.format(name=name, target=target)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    text, timing = result.stdout.rsplit("TIMING", 1)
    seconds, torch_imported = timing.split()
    print(f"{name} --help: {float(seconds) * 1000:.0f} ms")
    assert torch_imported == "False"
    assert "usage:" in text and "(default: None)" not in text and " object at " not in text
    assert "ValueMap(" not in text and "ColourMap(" not in text


def test_option_errors_are_in_plain_words(tmp_path, capsys):
    with pytest.raises(SystemExit):
        flare.main(["-i", str(tmp_path), "--counts", "1,2"])
    stderr = capsys.readouterr().err
    assert "argument --counts: expected three positive counts train,val,test" in stderr and "parse_counts" not in stderr
    with pytest.raises(SystemExit):
        busi.main(["-i", str(tmp_path), "-d", "abc"])
    assert "argument -d/--dataset-id: expected a whole number, got 'abc'" in capsys.readouterr().err


def test_busi_mask_error_does_not_suggest_an_option_busi_lacks(tmp_path, capsys):
    source = make_busi(tmp_path / "src", np.random.default_rng(0))
    mask = source / "Dataset_BUSI_with_GT" / "benign" / "benign (2)_mask.png"
    Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 60).save(mask)
    stderr = convert_fails(busi.main, source, tmp_path / "raw", capsys)
    assert f"{mask}: unexpected label values: values {{0, 60}} are neither 0/1 nor 0/255: BUSI masks are" in stderr
    assert "--label-map" not in stderr


def test_tn3k_missing_last_fold_file_is_a_warning(tmp_path, capsys):
    source = make_tn3k(tmp_path / "src", np.random.default_rng(0))
    (source / "tn3k-trainval-fold1.json").unlink()
    assert thyroid.main(["-i", str(source), "--output", str(tmp_path / "raw"), "--no-progress"]) == 0
    assert "warning: 2 trainval image(s) are in no fold's 'val' (e.g. indices [2, 3])" in capsys.readouterr().err
