"""Memory-fitted plans: the fake-tensor allocation count, the estimate against measured CPU peaks, the batch/patch
fit, ``nnUNetv2_ext_plan`` and ``-pl ExtPlanner_<trainer>`` through nnU-Net, the advice at training start."""

from __future__ import annotations

import json
import math

import pytest
import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

from nnunet_ext.benchmark.presets import setting_from_preset
from nnunet_ext.benchmark.trainer_step import benchmark_dataset_json, initialised_trainer
from nnunet_ext.planning.fit import GIB, dataset_batch_cap, fit_configuration, smaller_patch, with_patch_size
from nnunet_ext.planning.memory import AllocationCountingFakeMode, training_peak_bytes
from nnunet_ext.planning.plans import default_plans_name, reuse_preprocessed_data
from nnunet_ext.planning.validation import check
from nnunet_ext.registration import find_registered_trainer


def test_the_fake_mode_counts_each_new_storage_once_and_uncounts_it_when_freed():
    mode = AllocationCountingFakeMode()
    with mode:
        a = torch.empty(1000)
        b = a * 2
        view = b.view(10, 100)
        b.add_(1)
        assert mode.allocated == 8000
        del b, view
        assert mode.allocated == 4000
        assert float(a.sum()) == 1.0
        counts = torch.bincount(torch.zeros(7, dtype=torch.int64), minlength=3)
        assert counts.shape == (3,)
    assert mode.peak == 8000


def test_the_estimate_grows_with_the_batch_and_mixed_precision_needs_less():
    setting = setting_from_preset("2d_small")
    trainer_class = find_registered_trainer("nnUNetTrainerCMUNeXt_S")
    dataset_json = benchmark_dataset_json(setting)

    def peak(batch_size: int, dtype: torch.dtype | None = torch.bfloat16) -> int:
        return training_peak_bytes(trainer_class, setting.plans, setting.configuration, dataset_json, batch_size, dtype)

    two, four = peak(2), peak(4)
    assert four > two
    assert peak(6) - four == pytest.approx(four - two, rel=0.05)  # linear in the batch, as the fit models it
    assert peak(4, None) > four


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainer", "nnUNetTrainerCMUNeXt", "nnUNetTrainerGCTUNet"])
def test_the_estimate_against_the_measured_cpu_peak(trainer_name):
    """Float32 estimates vs the RSS growth of fresh processes over two real steps at batches 2 and 6: the growth per
    sample (activations) within 0.6-1.2, the total (RSS also holds allocator caches and oneDNN scratch buffers the
    estimate leaves out) within 0.5-1.1; the README states the measured ratios."""
    result = check(trainer_name, "2d_small", (2, 6))
    print(f"{trainer_name}: ratio {result.ratio:.2f}, per sample {result.per_sample_ratio:.2f}")
    assert 0.6 <= result.per_sample_ratio <= 1.2
    assert 0.5 <= result.ratio <= 1.1


def _configuration(patch: tuple[int, ...], batch: int = 12, median: tuple[int, ...] | None = None) -> dict:
    plans = setting_from_preset("2d_acdc").plans
    configuration = plans["configurations"]["2d_acdc"]
    configuration.update(batch_size=batch, median_image_size_in_voxels=list(median or patch))
    return with_patch_size(configuration, patch)


def _linear_estimate(fixed: float, per_voxel: float):
    def estimate(configuration: dict, batch_size: int) -> int:
        return int(fixed + batch_size * per_voxel * math.prod(configuration["patch_size"]))

    return estimate


def test_the_batch_is_the_largest_that_fits_below_the_dataset_cap():
    configuration = _configuration((256, 224), batch=1000, median=(256, 224))
    estimate = _linear_estimate(1 * GIB, 2000.0)
    result = fit_configuration("2d", configuration, estimate, 8 * GIB, num_training_cases=10_000)
    expected = math.floor((7 * GIB) / (2000.0 * 256 * 224))
    assert (result.batch_size, result.patch_size, result.fits) == (expected, (256, 224), True)
    assert result.peak_bytes <= 8 * GIB < estimate(result.configuration, expected + 1)
    capped = fit_configuration("2d", configuration, estimate, 80 * GIB, num_training_cases=100)
    assert capped.batch_size == dataset_batch_cap(configuration, 100, (256, 224)) == round(100 * 0.05)
    planned = fit_configuration("2d", _configuration((256, 224), batch=12), estimate, 80 * GIB, 10_000)
    assert planned.batch_size == 12  # never more than nnU-Net planned


def test_an_optimistic_linear_model_is_corrected_by_the_estimates():
    configuration = _configuration((64, 64), batch=1000)

    def convex(candidate: dict, batch_size: int) -> int:
        return int(GIB * (0.1 + 0.01 * batch_size + 0.0005 * batch_size**2))

    result = fit_configuration("2d", configuration, convex, 2 * GIB, num_training_cases=10**6)
    assert result.peak_bytes <= 2 * GIB < convex(configuration, result.batch_size + 1)


def test_a_patch_that_does_not_fit_batch_2_shrinks_as_nnunet_shrinks_it():
    configuration = _configuration((256, 224), median=(256, 200))
    estimate = _linear_estimate(0.5 * GIB, 60_000.0)  # batch 2 at 256x224: 6.9 GB
    result = fit_configuration("2d", configuration, estimate, 4 * GIB, num_training_cases=10_000)
    assert result.fits and result.batch_size == 2 and result.peak_bytes <= 4 * GIB
    sequence = [(256, 224)]
    while (smaller := smaller_patch(configuration, sequence[-1])) is not None:
        sequence.append(smaller)
    assert result.patch_size in sequence
    larger = sequence[sequence.index(result.patch_size) - 1]
    assert estimate({"patch_size": larger}, 2) > 4 * GIB  # the largest of nnU-Net's sequence that fits
    # nnU-Net first cuts the axis largest relative to the median shape (224 / 200 > 256 / 256)
    assert sequence[1][0] == 256 and sequence[1][1] < 224
    arch = result.configuration["architecture"]["arch_kwargs"]
    _, strides, kernels, patch, _ = get_pool_and_conv_props([1.0, 1.0], list(result.patch_size), 4, 999999)
    assert (arch["strides"], arch["kernel_sizes"], tuple(patch)) == (strides, kernels, result.patch_size)
    assert arch["n_stages"] == len(arch["features_per_stage"]) == len(strides) == len(arch["n_conv_per_stage"])
    assert len(arch["n_conv_per_stage_decoder"]) == len(strides) - 1


def test_nothing_fits_gives_the_smallest_patch_and_says_so():
    configuration = _configuration((64, 64))
    result = fit_configuration("2d", configuration, _linear_estimate(9 * GIB, 1.0), 8 * GIB, 10_000)
    assert not result.fits and result.batch_size == 2 and smaller_patch(configuration, result.patch_size) is None


def test_plans_names_and_reused_preprocessed_data():
    assert default_plans_name("nnUNetTrainerGCGLE", 8) == "nnUNetPlans_GCGLE_8G"
    assert default_plans_name("nnUNetTrainerMGCC_CMUNeXt", 24.5) == "nnUNetPlans_MGCC_CMUNeXt_24.5G"
    source = {"configurations": {"2d": _configuration((64, 64)) | {"data_identifier": "nnUNetPlans_2d"}}}
    same = {"configurations": {"2d": _configuration((32, 64)) | {"data_identifier": "new_2d"}}}
    assert reuse_preprocessed_data(same, source) == ["2d"]
    assert same["configurations"]["2d"]["data_identifier"] == "nnUNetPlans_2d"
    other = {"configurations": {"2d": _configuration((32, 64)) | {"data_identifier": "new_2d", "spacing": [2, 2]}}}
    assert reuse_preprocessed_data(other, source) == [] and other["configurations"]["2d"]["data_identifier"] == "new_2d"


def test_the_advice_names_the_plan_command_only_when_the_gpu_is_too_small(capsys):
    setting = setting_from_preset("2d_small")
    trainer = initialised_trainer(find_registered_trainer("nnUNetTrainerCMUNeXt_S"), setting, torch.device("cpu"))
    logged = []
    trainer.print_to_log_file = lambda *args, **kwargs: logged.append(" ".join(map(str, args)))
    trainer.warn_if_plans_exceed_gpu_memory(80 * GIB)
    assert logged == []
    trainer.warn_if_plans_exceed_gpu_memory(2**20)
    assert len(logged) == 1
    assert (
        "nnUNetv2_ext_plan -d Benchmark_2d_small -tr nnUNetTrainerCMUNeXt_S -c 2d_small -gpu_memory_target 1"
        in logged[0]
    )


def test_nnunetv2_ext_plan_writes_plans_that_nnunetv2_train_uses(nnunet_environment, synthetic_2d):
    env, spec = nnunet_environment, synthetic_2d
    folder = env.preprocessed / spec.folder_name
    source = json.loads((folder / "nnUNetPlans.json").read_text())
    default = source["configurations"]["2d"]
    trainer_name = "nnUNetTrainerCMUNeXt_S"
    peak_two = training_peak_bytes(
        find_registered_trainer(trainer_name), source, "2d", json.loads((folder / "dataset.json").read_text()), 2
    )
    target_gb = 0.8 * peak_two / GIB  # batch 2 at the planned patch does not fit: the patch must shrink
    output = env.run(
        "nnUNetv2_ext_plan",
        "-d",
        str(spec.dataset_id),
        "-tr",
        trainer_name,
        "-gpu_memory_target",
        f"{target_gb:.6f}",
        "-overwrite_plans_name",
        "nnUNetPlans_small",
    )
    plans = json.loads((folder / "nnUNetPlans_small.json").read_text())
    fitted = plans["configurations"]["2d"]
    assert fitted["batch_size"] == 2 and math.prod(fitted["patch_size"]) < math.prod(default["patch_size"])
    assert fitted["data_identifier"] == default["data_identifier"]  # preprocessed data reused
    assert f"| 2d | {'x'.join(map(str, default['patch_size']))} | {default['batch_size']} |" in output
    assert "nnUNetv2_train" in output and "-p nnUNetPlans_small" in output
    env.run(
        "nnUNetv2_train",
        str(spec.dataset_id),
        "2d",
        "0",
        "-tr",
        trainer_name,
        "-p",
        "nnUNetPlans_small",
        "-device",
        "cpu",
        extra_env={
            "nnUNet_ext_num_epochs": "1",
            "nnUNet_ext_num_iterations_per_epoch": "2",
            "nnUNet_ext_num_val_iterations_per_epoch": "1",
        },
    )
    run = next(env.results.glob(f"{spec.folder_name}/{trainer_name}__nnUNetPlans_small__2d/fold_0"))
    used = json.loads((run.parent / "plans.json").read_text())["configurations"]["2d"]
    assert (used["patch_size"], used["batch_size"]) == (fitted["patch_size"], 2)
    assert (run / "checkpoint_final.pth").is_file()


def test_nnunet_plan_experiment_finds_the_trainer_planner(nnunet_environment, synthetic_2d):
    env, spec = nnunet_environment, synthetic_2d
    output = env.run("nnUNetv2_plan_experiment", "-d", str(spec.dataset_id), "-pl", "ExtPlanner_nnUNetTrainerCMUNeXt_S")
    folder = env.preprocessed / spec.folder_name
    plans = json.loads((folder / "nnUNetPlans_CMUNeXt_S_8G.json").read_text())
    default = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    fitted = plans["configurations"]["2d"]
    assert plans["plans_name"] == "nnUNetPlans_CMUNeXt_S_8G"
    assert fitted["data_identifier"] == default["data_identifier"]
    assert fitted["patch_size"] == default["patch_size"]  # 8 GB hold this small network at the planned patch
    assert fitted["batch_size"] == default["batch_size"]
    assert "| 2d |" in output
