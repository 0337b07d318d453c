"""Extended evaluation: metric values on hand-made masks and against medpy / surface-distance, the protocols'
empty-mask rules, and the files nnUNetv2_ext_evaluate writes."""

from __future__ import annotations

import csv
import json
import math

import medpy.metric.binary as medpy_binary
import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance
from nnunetv2.evaluation.evaluate_predictions import compute_metrics
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from scipy.ndimage import binary_dilation, binary_erosion, distance_transform_edt

from nnunet_ext.cli import evaluate as evaluate_cli
from nnunet_ext.evaluation.folders import ClassSet, EvaluationSettings, evaluate_case
from nnunet_ext.evaluation.metrics import (
    average_symmetric_surface_distance,
    dice,
    hausdorff_distance_95,
    iou,
    normalized_surface_dice,
    surface_distances,
)
from nnunet_ext.evaluation.protocols import PROTOCOLS

NAN = float("nan")


def shifted_boxes(shape, start, size, shift_axis, shift):
    """A box as reference and the same box moved by ``shift`` voxels along ``shift_axis`` as prediction."""
    reference = np.zeros(shape, bool)
    reference[tuple(slice(s, s + size) for s in start)] = True
    return reference, np.roll(reference, shift, axis=shift_axis)


def random_blob(rng, shape, iterations):
    seed = np.zeros(shape, bool)
    seed[tuple(int(rng.integers(s // 3, 2 * s // 3)) for s in shape)] = True
    seed[tuple(int(rng.integers(s // 3, 2 * s // 3)) for s in shape)] = True
    return binary_dilation(seed, iterations=iterations)


def independent_directed_distances(source, target, spacing):
    """Distances of ``source``'s edge voxels to ``target``'s edge (scipy only, the definition medpy documents)."""
    edge = lambda mask: mask & ~binary_erosion(mask, border_value=0)  # noqa: E731
    return distance_transform_edt(~edge(target), sampling=spacing)[edge(source)]


def write_volume(path, array, spacing_zyx=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path))


# ---- metric values on hand-made masks --------------------------------------------------------------------------------


def test_shifted_square_values_computed_by_hand():
    # 4x4 square moved one row down; rows are 2 mm apart, columns 1 mm.
    # Edges: all 12 border pixels of each square. Prediction edge -> reference edge: the four pixels of the top row's
    # two ends and the four side pixels of rows 2-3 lie on the reference edge (0); the top row's two middle pixels are
    # 1 mm from the reference's side columns; the bottom row's four pixels are 2 mm below the reference's bottom row.
    # By symmetry the reverse direction has the same distances.
    reference, prediction = shifted_boxes((10, 10), (3, 3), 4, shift_axis=0, shift=1)
    spacing = (2.0, 1.0)
    assert dice(reference, prediction) == pytest.approx(2 * 12 / 32)
    assert iou(reference, prediction) == pytest.approx(12 / 20)
    pred_to_ref, ref_to_pred = surface_distances(reference, prediction, spacing)
    expected = sorted([0.0] * 6 + [1.0] * 2 + [2.0] * 4)
    assert sorted(pred_to_ref) == pytest.approx(expected)
    assert sorted(ref_to_pred) == pytest.approx(expected)
    assert average_symmetric_surface_distance(pred_to_ref, ref_to_pred) == pytest.approx((2 * 1 + 4 * 2) / 12)
    assert hausdorff_distance_95(pred_to_ref, ref_to_pred) == pytest.approx(2.0)


def test_shifted_cube_overlap_extent_and_edge_count():
    # A 6^3 cube moved 2 voxels along z (3 mm apart): Dice (6-2)/6, IoU 4/8, 6^3 - 4^3 edge voxels per cube, and
    # the farthest edge voxel is exactly the shift away (2 x 3 mm).
    reference, prediction = shifted_boxes((14, 12, 12), (3, 3, 3), 6, shift_axis=0, shift=2)
    spacing = (3.0, 0.8, 0.8)
    assert dice(reference, prediction) == pytest.approx(4 / 6)
    assert iou(reference, prediction) == pytest.approx(4 / 8)
    pred_to_ref, ref_to_pred = surface_distances(reference, prediction, spacing)
    assert len(pred_to_ref) == len(ref_to_pred) == 6**3 - 4**3
    assert pred_to_ref.max() == pytest.approx(6.0) and ref_to_pred.max() == pytest.approx(6.0)
    assert pred_to_ref.min() == 0.0


def test_single_voxels_give_the_anisotropic_euclidean_distance():
    reference, prediction = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    reference[2, 2, 2], prediction[3, 4, 6] = True, True
    spacing = (3.0, 1.0, 0.5)
    distance = math.sqrt(3.0**2 + 2.0**2 + 2.0**2)
    pred_to_ref, ref_to_pred = surface_distances(reference, prediction, spacing)
    assert hausdorff_distance_95(pred_to_ref, ref_to_pred) == pytest.approx(distance)
    assert average_symmetric_surface_distance(pred_to_ref, ref_to_pred) == pytest.approx(distance)
    assert dice(reference, prediction) == 0.0


def test_nsd_identical_far_and_within_tolerance():
    reference, prediction = shifted_boxes((20, 12, 12), (3, 3, 3), 5, shift_axis=1, shift=1)
    spacing = (1.0, 1.5, 1.0)
    assert normalized_surface_dice(reference, reference, spacing, tolerance=0.0) == pytest.approx(1.0)
    # every surface element of a box moved by 1.5 mm lies within 1.5 mm of the other box's surface
    assert normalized_surface_dice(reference, prediction, spacing, tolerance=1.5) == pytest.approx(1.0)
    assert normalized_surface_dice(reference, prediction, spacing, tolerance=1.0) < 1.0
    far = np.roll(reference, 8, axis=0)  # 3 voxels of background between the boxes
    assert normalized_surface_dice(reference, far, spacing, tolerance=1.0) == 0.0


# ---- against independent implementations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "spacing"), [((24, 40, 36), (3.0, 0.8, 1.1)), ((64, 50), (0.5, 1.3)), ((20, 20, 20), (1.0, 1.0, 1.0))]
)
def test_surface_metrics_match_medpy_and_surface_distance(shape, spacing):
    rng = np.random.default_rng(len(shape) + int(spacing[0] * 10))
    for _ in range(3):
        reference = random_blob(rng, shape, int(rng.integers(3, 6)))
        prediction = random_blob(rng, shape, int(rng.integers(3, 6))) | (reference & random_blob(rng, shape, 4))
        pred_to_ref, ref_to_pred = surface_distances(reference, prediction, spacing)
        # medpy: pooled HD95 and ASSD, with and without spacing
        assert hausdorff_distance_95(pred_to_ref, ref_to_pred, pooled=True) == pytest.approx(
            medpy_binary.hd95(prediction, reference, voxelspacing=spacing), rel=1e-5
        )
        assert average_symmetric_surface_distance(pred_to_ref, ref_to_pred) == pytest.approx(
            medpy_binary.assd(prediction, reference, voxelspacing=spacing), rel=1e-5
        )
        # directed convention: the larger of the two directed 95th percentiles
        directed = [
            independent_directed_distances(prediction, reference, spacing),
            independent_directed_distances(reference, prediction, spacing),
        ]
        assert hausdorff_distance_95(pred_to_ref, ref_to_pred) == pytest.approx(
            max(np.percentile(d, 95) for d in directed), rel=1e-5
        )
        # surface-distance (DeepMind): NSD at several tolerances
        deepmind = surface_distance.compute_surface_distances(reference, prediction, spacing)
        for tolerance in (0.5, 1.0, 2.0, 4.0):
            assert normalized_surface_dice(reference, prediction, spacing, tolerance) == pytest.approx(
                surface_distance.compute_surface_dice_at_tolerance(deepmind, tolerance), abs=1e-6
            )


# ---- protocols -------------------------------------------------------------------------------------------------------


def score(protocol, reference, prediction, spacing=(2.0, 1.0, 1.0), metrics=("dice", "hd95"), label=1):
    return PROTOCOLS[protocol].score(reference, prediction, spacing, metrics, tolerance=1.0, label=label)


def test_empty_mask_rules_per_protocol():
    empty = np.zeros((4, 5, 6), bool)
    present = empty.copy()
    present[1:3, 1:3, 1:3] = True
    diagonal_mm = math.sqrt((4 * 2.0) ** 2 + 5**2 + 6**2)
    metrics = ("dice", "iou", "nsd", "hd95", "assd")
    expected = {
        # (both empty, only prediction, only reference) as (Dice, IoU, NSD, HD95, ASSD)
        "nnunet": [(NAN,) * 5, (0, 0, 0, diagonal_mm, diagonal_mm), (0, 0, 0, diagonal_mm, diagonal_mm)],
        "transunet-synapse": [(0,) * 5, (1, 1, 1, 0, 0), (0,) * 5],
        "flare": [(1, 1, 1, 0, 0), (0, 0, 0, diagonal_mm, diagonal_mm), (0, 0, 0, diagonal_mm, diagonal_mm)],
    }
    for protocol, rows in expected.items():
        for (reference, prediction), row in zip([(empty, empty), (empty, present), (present, empty)], rows):
            values = score(protocol, reference, prediction, metrics=metrics)
            assert [values[m] for m in metrics] == pytest.approx(list(row), nan_ok=True), (protocol, row)


def test_transunet_protocol_is_medpy_in_voxel_units_and_nnunet_is_in_mm():
    rng = np.random.default_rng(7)
    shape, spacing = (20, 30, 30), (3.0, 0.7, 0.7)
    reference = random_blob(rng, shape, 4)
    prediction = random_blob(rng, shape, 5) | reference
    transunet = score("transunet-synapse", reference, prediction, spacing, metrics=("dice", "hd95"))
    assert transunet["dice"] == pytest.approx(medpy_binary.dc(prediction, reference))
    assert transunet["hd95"] == pytest.approx(medpy_binary.hd95(prediction, reference), rel=1e-5)  # no voxelspacing
    nnunet = score("nnunet", reference, prediction, spacing, metrics=("dice", "hd95"))
    assert nnunet["dice"] == transunet["dice"]
    assert nnunet["hd95"] != pytest.approx(transunet["hd95"], rel=1e-3)


def test_flare_scores_tubular_organs_on_the_reference_slices_only():
    reference = np.zeros((10, 8, 8), bool)
    reference[2:7, 3:5, 3:5] = True  # slices 2..6
    prediction = reference.copy()
    prediction[8:10, 3:5, 3:5] = True  # false positives below the reference's extent
    spacing = (2.5, 0.8, 0.8)
    aorta = score("flare", reference, prediction, spacing, metrics=("dice",), label=5)
    liver = score("flare", reference, prediction, spacing, metrics=("dice",), label=1)
    assert aorta["dice"] == 1.0  # scored on slices [2, 6): the false positives are outside
    assert liver["dice"] == pytest.approx(2 * 20 / (20 + 28))
    # the official script's exclusive upper bound: a miss on the last reference slice is not seen
    missed_last = reference.copy()
    missed_last[6] = False
    assert score("flare", reference, missed_last, spacing, metrics=("dice",), label=6)["dice"] == 1.0
    # and its NSD equals DeepMind's on the cropped volumes at the FLARE aorta tolerance (2 mm)
    shifted = np.roll(reference, 1, axis=2)
    nsd = PROTOCOLS["flare"].score(reference, shifted, spacing, ("nsd",), tolerance=2.0, label=5)["nsd"]
    deepmind = surface_distance.compute_surface_distances(reference[2:6], shifted[2:6], spacing)
    assert nsd == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(deepmind, 2.0), abs=1e-6)


def test_settings_resolve_tolerances_and_reject_bad_input():
    classes = ClassSet.from_dataset_json({"labels": {"background": 0, "liver": 1, "spleen": 2}})
    settings = EvaluationSettings.create("nnunet", None, classes, ["2", "spleen=3.5"])
    assert settings.metrics == PROTOCOLS["nnunet"].default_metrics
    assert settings.tolerances == {"1": 2.0, "2": 3.5}
    regions = ClassSet.from_dataset_json(
        {"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]}
    )
    assert EvaluationSettings.create("nnunet", ["nsd"], regions, ["(1, 2)=4"]).tolerances == {"(1, 2)": 4.0, "2": 1.0}
    flare = EvaluationSettings.create("flare", None, ClassSet.from_labels([0, 1, 12]))
    assert flare.tolerances == {"1": 5.0, "12": 7.0}
    with pytest.raises(ValueError, match="no NSD tolerance for 14"):
        EvaluationSettings.create("flare", ["nsd"], ClassSet.from_labels([1, 14]))
    with pytest.raises(ValueError, match="no class 'kidney'"):
        EvaluationSettings.create("nnunet", None, classes, ["kidney=2"])
    with pytest.raises(ValueError, match="not a number"):
        EvaluationSettings.create("nnunet", None, classes, ["liver=two"])
    with pytest.raises(ValueError, match="unknown metric"):
        EvaluationSettings.create("nnunet", ["dice", "hd100"], classes)


# ---- cases and folders -----------------------------------------------------------------------------------------------


def test_regions_and_ignore_label_match_nnunet(tmp_path):
    """Dice and IoU of a region-based dataset with an ignore label equal nnU-Net's own compute_metrics."""
    dataset_json = {
        "labels": {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3},
        "regions_class_order": [1, 2],
        "file_ending": ".nii.gz",
    }
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 3, (6, 10, 10)).astype(np.uint8)
    reference[:, :, :3] = 3  # not annotated
    prediction = rng.integers(0, 3, (6, 10, 10)).astype(np.uint8)
    write_volume(tmp_path / "ref.nii.gz", reference, (2.0, 1.0, 1.0))
    write_volume(tmp_path / "pred.nii.gz", prediction, (2.0, 1.0, 1.0))
    classes = ClassSet.from_dataset_json(dataset_json)
    assert classes.classes == ((1, 2), 2) and classes.ignore_label == 3
    assert classes.names == {"(1, 2)": "whole", "2": "core"}
    settings = EvaluationSettings.create("nnunet", ["dice", "iou", "hd95"], classes)
    ours = evaluate_case(str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"), SimpleITKIO(), classes, settings)
    theirs = compute_metrics(
        str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"), SimpleITKIO(), list(classes.classes), 3
    )
    for region in classes.classes:
        key = str(region)
        assert ours["metrics"][key]["Dice"] == pytest.approx(theirs["metrics"][region]["Dice"])
        assert ours["metrics"][key]["IoU"] == pytest.approx(theirs["metrics"][region]["IoU"])
        assert ours["metrics"][key]["n_pred"] == theirs["metrics"][region]["n_pred"]


def make_3d_dataset(root, cases=3):
    """labels 1 and 2; case k has label 1 predicted with a k-voxel shift, label 2 perfect except in case 0."""
    references, predictions = root / "labelsTr", root / "predictions"
    references.mkdir(parents=True)
    predictions.mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}, "file_ending": ".nii.gz"})
    )
    for k in range(cases):
        reference = np.zeros((12, 16, 16), np.uint8)
        reference[3:9, 3:9, 3:9] = 1
        reference[2:5, 11:14, 11:14] = 2
        prediction = np.where(reference == 1, 0, reference)
        prediction[np.roll(reference == 1, k, axis=1)] = 1
        if k == 0:
            prediction[prediction == 2] = 0  # spleen missed
        write_volume(references / f"case_{k}.nii.gz", reference, (2.0, 1.0, 1.0))
        write_volume(predictions / f"case_{k}.nii.gz", prediction, (2.0, 1.0, 1.0))
    return references, predictions


def test_evaluate_cli_writes_json_csv_markdown_and_plots(tmp_path, capsys):
    references, predictions = make_3d_dataset(tmp_path)
    output = tmp_path / "report"
    evaluate_cli.main(["-ref", str(references), "-pred", str(predictions), "-o", str(output), "-np", "0"])
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["protocol"] == "nnunet" and summary["num_cases"] == 3
    assert summary["classes"] == {"1": "liver", "2": "spleen"}
    liver_dice = [case["metrics"]["1"]["Dice"] for case in summary["metric_per_case"]]
    assert liver_dice == pytest.approx([1.0, 5 / 6, 4 / 6])
    assert summary["mean"]["1"]["Dice"] == pytest.approx(np.mean([1.0, 5 / 6, 4 / 6]))
    assert summary["std"]["1"]["Dice"] == pytest.approx(np.std([1.0, 5 / 6, 4 / 6]))
    # the missed spleen in case 0: Dice 0, HD95 the image diagonal in mm
    case0 = summary["metric_per_case"][0]["metrics"]["2"]
    assert case0["Dice"] == 0.0 and case0["HD95"] == pytest.approx(math.sqrt(24**2 + 16**2 + 16**2))
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        (summary["mean"]["1"]["Dice"] + summary["mean"]["2"]["Dice"]) / 2
    )
    with open(output / "metrics_per_case.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert set(rows[0]) == {"case", "class", "name", "Dice", "IoU", "HD95", "ASSD", "NSD", "n_ref", "n_pred"}
    assert float(rows[2]["Dice"]) == pytest.approx(5 / 6)
    markdown = (output / "summary.md").read_text()
    assert "| liver (1) | 0.8333 ± 0.1361 |" in markdown and "HD95 (mm)" in markdown and "image diagonal" in markdown
    for metric in ("dice", "iou", "hd95", "assd", "nsd"):
        assert (output / f"boxplot_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "foreground mean" in capsys.readouterr().out


def test_protocols_give_different_tables_for_the_same_predictions(tmp_path):
    references, predictions = make_3d_dataset(tmp_path)
    results = {}
    for protocol in ("nnunet", "transunet-synapse"):
        output = tmp_path / protocol
        evaluate_cli.main(
            ["-ref", str(references), "-pred", str(predictions), "-o", str(output), "-np", "0", "--protocol", protocol]
        )
        results[protocol] = json.loads((output / "metrics.json").read_text())
    assert results["transunet-synapse"]["metrics"] == ["Dice", "HD95"]
    nnunet_case0 = results["nnunet"]["metric_per_case"][0]["metrics"]["2"]
    transunet_case0 = results["transunet-synapse"]["metric_per_case"][0]["metrics"]["2"]
    assert transunet_case0["HD95"] == 0.0 and nnunet_case0["HD95"] > 30  # a missed organ: 0 vs the diagonal
    # liver shifted by 2 voxels of 1 mm: same in mm and voxels along y; the HD95 conventions agree for a shift
    case2 = [results[p]["metric_per_case"][2]["metrics"]["1"]["HD95"] for p in results]
    assert case2 == pytest.approx([2.0, 2.0])


def test_2d_png_cases_are_scored_in_2d(tmp_path):
    references, predictions = tmp_path / "ref", tmp_path / "pred"
    references.mkdir()
    predictions.mkdir()
    reference, prediction = shifted_boxes((32, 32), (8, 8), 10, shift_axis=1, shift=3)
    NaturalImage2DIO().write_seg(reference[None].astype(np.uint8), str(references / "a.png"), {})
    NaturalImage2DIO().write_seg(prediction[None].astype(np.uint8), str(predictions / "a.png"), {})
    output = tmp_path / "report"
    evaluate_cli.main(["-ref", str(references), "-pred", str(predictions), "-o", str(output), "-np", "0"])
    values = json.loads((output / "metrics.json").read_text())["metric_per_case"][0]["metrics"]["1"]
    pred_to_ref, ref_to_pred = surface_distances(reference, prediction, (1.0, 1.0))
    assert values["Dice"] == pytest.approx(0.7)
    assert values["HD95"] == pytest.approx(hausdorff_distance_95(pred_to_ref, ref_to_pred))
    assert values["ASSD"] == pytest.approx(medpy_binary.assd(prediction, reference))


def test_evaluate_cli_refuses_bad_input_without_touching_files(tmp_path):
    references, predictions = make_3d_dataset(tmp_path)
    before = sorted(p.name for p in predictions.iterdir())
    with pytest.raises(SystemExit, match="is not a report folder"):
        evaluate_cli.main(["-ref", str(references), "-pred", str(predictions), "-o", str(predictions), "-np", "0"])
    assert sorted(p.name for p in predictions.iterdir()) == before
    (predictions / "case_2.nii.gz").unlink()
    with pytest.raises(SystemExit, match=r"no prediction .* for case_2\.nii\.gz"):
        evaluate_cli.main(["-ref", str(references), "-pred", str(predictions), "-np", "0"])
    write_volume(predictions / "case_2.nii.gz", np.zeros((12, 16, 15), np.uint8), (2.0, 1.0, 1.0))
    with pytest.raises(SystemExit, match=r"case_2.nii.gz has shape \(12, 16, 15\)"):
        evaluate_cli.main(["-ref", str(references), "-pred", str(predictions), "-np", "0"])
    assert not (predictions / "ext_evaluation_nnunet").exists()


def test_evaluate_console_script_in_worker_processes(tmp_path, nnunet_environment):
    # Dice and IoU only: the workers then skip importing MONAI (5 s each); surface metrics are tested in-process.
    references, predictions = make_3d_dataset(tmp_path, cases=4)
    arguments = ["-ref", str(references), "-pred", str(predictions), "-np", "2", "--metrics", "dice,iou"]
    output = nnunet_environment.run("nnUNetv2_ext_evaluate", *arguments)
    summary = json.loads((predictions / "ext_evaluation_nnunet" / "metrics.json").read_text())
    assert [case["case"] for case in summary["metric_per_case"]] == [f"case_{k}" for k in range(4)]
    assert summary["mean"]["1"]["Dice"] == pytest.approx(np.mean([1, 5 / 6, 4 / 6, 3 / 6]))
    assert "| liver (1) |" in output
