"""The semi-supervised trainer base: batch composition, label-free pool loading, loss-term logging, resume, errors.

A recording test scheme (two networks with cross pseudo supervision and a class-weight state, as the base class's
docstring example) is trained through nnU-Net's own ``run_training`` on a dataset whose pool cases have their label
files replaced by garbage: any read of a pool label would fail the run.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import ClassVar

import blosc2
import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cuda_path import small_setting
from nnunet_runs import SHORT_SCHEDULE
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint, run_training
from PIL import Image
from torch import nn

from nnunet_ext.benchmark.trainer_step import initialised_trainer, trainer_train_step
from nnunet_ext.data.synthetic import synthesize_case
from nnunet_ext.registration import TRAINERS
from nnunet_ext.ssl.preprocessing import StalePoolError, preprocess_pool
from nnunet_ext.ssl.ramps import ramped_weight, sigmoid_rampup
from nnunet_ext.ssl.splits import SplitMismatchError, create_ssl_split_file
from nnunet_ext.ssl.unlabeled_data import (
    EmptyPoolError,
    UnlabeledDataset,
    ZeroSegmentation,
    nnUNetUnlabeledDataLoader,
    pool_sources,
)
from nnunet_ext.trainers.cmunext import build_cmunext
from nnunet_ext.trainers.guidednet import nnUNetTrainerGuidedNet_CMUNeXt
from nnunet_ext.trainers.mgcc import nnUNetTrainerMGCC_CMUNeXt
from nnunet_ext.trainers.semi_supervised import (
    CHECKPOINT_KEY,
    SemiSupervisedBatch,
    nnUNetTrainerSemiSupervisedBase,
    split_batch,
)

TRAINER_DATASET_ID = 977
ERRORS_DATASET_ID = 978
SCHEME = "nnUNetTrainerRecordingScheme"
LABELED, UNLABELED = 2, 3
RAMP = partial(ramped_weight, 0.1, rampup_length=6, iterations_per_step=1)


class nnUNetTrainerRecordingScheme(nnUNetTrainerSemiSupervisedBase):
    """Test scheme: main network + a second one with its optimizer, CPS between them, recording every step."""

    build_network_architecture = staticmethod(partial(build_cmunext, "cmunext_s"))
    steps: ClassVar[list[dict]] = []

    def batch_composition(self, batch_size: int) -> tuple[int, int]:
        return LABELED, UNLABELED

    def initialize(self):
        super().initialize()
        network = nn.Conv2d(self.num_input_channels, self.label_manager.num_segmentation_heads, 3, padding=1)
        self.register_network("network2", network, torch.optim.SGD(network.parameters(), 0.01, momentum=0.9))
        self.class_weights = torch.ones(self.label_manager.num_segmentation_heads, device=self.device)
        self.steps_seen = 0
        self.register_state("class_weights", "steps_seen")

    def compute_scheme_loss(self, batch: SemiSupervisedBatch):
        type(self).steps.append(
            {
                "iteration": self.global_iteration,
                "labeled": batch.labeled_keys,
                "unlabeled": batch.unlabeled_keys,
                "shapes": (tuple(batch.labeled_data.shape), tuple(batch.unlabeled_data.shape)),
                "target_shapes": [tuple(t.shape) for t in batch.target],
            }
        )
        output = self.network(batch.data)
        labeled_output, _ = batch.split(output)
        supervised = self.loss(labeled_output, batch.target)
        cps = F.cross_entropy(self.network2(batch.data), output[0].argmax(1).detach(), weight=self.class_weights)
        self.class_weights = 0.9 * self.class_weights + 0.1 * torch.rand_like(self.class_weights)
        self.steps_seen += 1
        weight = RAMP(self.global_iteration)
        return supervised + weight * cps, {"supervised": supervised, "cps": cps, "cps_weight": weight}


# -------------------------------------------------------------------------------------------------- units
def test_sigmoid_rampup_reproduces_the_published_ssl4mis_values():
    # SSL4MIS' ramp: consistency weight / c at iterations 0, 7 500, 15 000, 20 000 and >= 30 000 (ramp 200 x 150)
    expected = {0: 0.0067, 7_500: 0.060, 15_000: 0.287, 20_000: 0.571, 30_000: 1.0, 45_000: 1.0}
    for iteration, value in expected.items():
        assert ramped_weight(7.0, iteration, 200) == pytest.approx(7.0 * value, abs=7.0 * 6e-4)
    assert ramped_weight(1.0, 149, 200) == ramped_weight(1.0, 0, 200)  # advances every 150 iterations
    assert sigmoid_rampup(5, 0) == 1.0 and sigmoid_rampup(-3, 10) == pytest.approx(np.exp(-5))


@pytest.mark.parametrize(
    ("trainer_class", "full_weight"), [(nnUNetTrainerMGCC_CMUNeXt, 7.0), (nnUNetTrainerGuidedNet_CMUNeXt, 0.1)]
)
def test_relative_rampup_gives_the_published_weight_at_the_same_fraction_of_the_run(
    monkeypatch, trainer_class, full_weight
):
    """A 1 000-iteration run: at its middle the published ramp (counted in iterations) is still at its start; the
    relative ramp is where the published one is at the middle of its 20 000-iteration run (ramp step 66 of 200)."""
    monkeypatch.setenv("nnUNet_ext_num_epochs", "4")
    monkeypatch.setenv("nnUNet_ext_num_iterations_per_epoch", "250")
    setting = small_setting((64, 64))
    expected = {"published": math.exp(-5 * (1 - 3 / 200) ** 2), "relative": math.exp(-5 * (1 - 66 / 200) ** 2)}
    for mode, fraction in expected.items():
        monkeypatch.setenv("nnUNet_ext_rampup", mode)
        torch.manual_seed(0)
        trainer = initialised_trainer(trainer_class, setting, torch.device("cpu"))
        assert trainer.rampup_end == {"published": 30_000, "relative": 1_500}[mode]
        data = torch.randn(setting.batch_size, setting.input_channels, *setting.patch_size)
        terms = trainer_train_step(trainer, data, setting.num_classes, global_iteration=500)()["loss_terms"]
        assert terms["consistency_weight"] == pytest.approx(full_weight * fraction, rel=1e-6)
    monkeypatch.setenv("nnUNet_ext_rampup", "linear")
    with pytest.raises(ValueError, match="nnUNet_ext_rampup='linear'"):
        initialised_trainer(trainer_class, setting, torch.device("cpu"))


@pytest.mark.parametrize(("batch_size", "expected"), [(2, (1, 1)), (8, (4, 4)), (5, (3, 2)), (12, (6, 6)), (1, (1, 1))])
def test_default_batch_composition_is_half_and_half(batch_size, expected):
    assert split_batch(batch_size, 0.5) == expected


def test_batch_split_cuts_tensors_and_deep_supervision_lists():
    batch = SemiSupervisedBatch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), torch.ones(3, 1, 8, 8), [], [])
    assert batch.data.shape == (5, 1, 8, 8) and batch.data[2:].eq(1).all()
    output = [torch.arange(5.0)[:, None], torch.arange(5.0)[:, None] * 10]
    labeled, unlabeled = batch.split(output)
    assert [t.flatten().tolist() for t in labeled] == [[0, 1], [0, 10]]
    assert [t.flatten().tolist() for t in unlabeled] == [[2, 3, 4], [20, 30, 40]]


def test_the_base_class_cannot_be_used_without_a_scheme_loss():
    with pytest.raises(TypeError, match="abstract"):
        nnUNetTrainerSemiSupervisedBase({}, "2d", 0, {})


def test_zero_segmentation_materialises_only_the_crop():
    seg = ZeroSegmentation((1, 4, 500, 600))
    crop = seg[:, 1:3, 10:42, -5:]
    assert crop.shape == (1, 2, 32, 5) and crop.dtype == np.int16 and not crop.any()
    crop[...] = 1  # writable, a fresh array
    assert not seg[:, 1:3, 10:42, -5:].any()


# ------------------------------------------------------------------------------------------------ training
def corrupt(path) -> None:
    path.write_bytes(b"label data must never be read")


@pytest.fixture(scope="module")
def trainer_dataset(synthetic_2d, copy_prepared_dataset, nnunet_environment):
    """Copy of the 2D dataset with 2 imagesUl cases preprocessed, splits_ssl.json (4 labeled per fold), and every
    label-derived file of fold 0's pool cases (segmentation, .pkl) replaced by garbage."""
    spec = copy_prepared_dataset(synthetic_2d, TRAINER_DATASET_ID)
    raw = nnunet_environment.raw / spec.folder_name
    (raw / "imagesUl").mkdir()
    for index in range(2):
        image, _ = synthesize_case(spec.shape, (1.0, 1.0), 1, np.random.default_rng(100 + index))
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(raw / "imagesUl" / f"ul_{index}_0000.png")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in nnunet_environment.env.items():
            patch.setenv(name, value)
        preprocess_pool(TRAINER_DATASET_ID, "2d", pool="real", num_processes=0)
        _, content, _ = create_ssl_split_file(TRAINER_DATASET_ID, labeled_count=4, seed=0)
    preprocessed = nnunet_environment.preprocessed / spec.folder_name
    for case in content["folds"][0]["unlabeled"]:
        corrupt(preprocessed / "nnUNetPlans_2d" / f"{case}_seg.b2nd")
        corrupt(preprocessed / "nnUNetPlans_2d" / f"{case}.pkl")
    for case in ("ul_0", "ul_1"):
        corrupt(preprocessed / "nnUNetPlans_2d_unlabeled" / "real" / f"{case}_seg.b2nd")
        corrupt(preprocessed / "nnUNetPlans_2d_unlabeled" / "real" / f"{case}.pkl")
    return spec, content["folds"][0]


@pytest.fixture
def scheme_environment(nnunet_paths, monkeypatch):
    """Short schedule, the recording scheme findable by nnU-Net's lookup, one validation export worker."""
    for name, value in SHORT_SCHEDULE.items():
        monkeypatch.setenv(name, value)
    cls = nnUNetTrainerRecordingScheme
    monkeypatch.setitem(TRAINERS, SCHEME, f"{cls.__module__}:{cls.__qualname__}")
    monkeypatch.setattr(nnunet_trainer_module, "default_num_processes", 1)
    monkeypatch.setattr(nnUNetTrainerRecordingScheme, "steps", [])
    return nnunet_paths


def test_unlabeled_loader_reads_images_only_and_hands_out_no_target(trainer_dataset, nnunet_paths):
    spec, fold = trainer_dataset
    folder = nnunet_paths.preprocessed / spec.folder_name / "nnUNetPlans_2d"
    case = fold["unlabeled"][0]
    with pytest.raises(Exception, match=r"blosc2|pickle|load"):  # the label file of a pool case is garbage
        blosc2.open(str(folder / f"{case}_seg.b2nd"))[:]
    dataset = UnlabeledDataset({f"split/{case}": folder / f"{case}.b2nd"})
    data, seg, previous, properties = dataset.load_case(f"split/{case}")
    assert data.shape == (1, 1, *spec.shape) and isinstance(seg, ZeroSegmentation) and seg.shape == data.shape
    assert previous is None and properties == {"class_locations": {}}
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    loader = nnUNetUnlabeledDataLoader(dataset, 3, [64, 64], [64, 64], LabelManager({"background": 0, "a": 1}, None))
    batch = next(loader)
    assert set(batch) == {"data", "keys"} and batch["data"].shape == (3, 1, 64, 64)
    assert list(batch["keys"]) == [f"split/{case}"] * 3


def test_training_draws_fixed_labeled_and_unlabeled_shares_and_never_reads_pool_labels(
    trainer_dataset, scheme_environment
):
    spec, fold = trainer_dataset
    run_training(str(TRAINER_DATASET_ID), "2d", 0, SCHEME, device=torch.device("cpu"))

    steps = nnUNetTrainerRecordingScheme.steps
    assert [step["iteration"] for step in steps] == list(range(8))  # 2 epochs x 4 iterations
    pool = {f"split/{case}" for case in fold["unlabeled"]} | {"real/ul_0", "real/ul_1"}
    for step in steps:
        assert len(step["labeled"]) == LABELED and set(step["labeled"]) <= set(fold["labeled"])
        assert len(step["unlabeled"]) == UNLABELED and set(step["unlabeled"]) <= pool
        assert step["shapes"] == ((LABELED, 1, *spec.shape), (UNLABELED, 1, *spec.shape))
        assert step["target_shapes"][:2] == [(LABELED, 1, *spec.shape), (LABELED, 1, 48, 48)]
    seen = {key for step in steps for key in step["labeled"] + step["unlabeled"]}
    assert not seen & (set(fold["val"]) | {f"split/{case}" for case in fold["val"]})

    output = scheme_environment.results / spec.folder_name / f"{SCHEME}__nnUNetPlans__2d" / "fold_0"
    log = "".join(path.read_text() for path in output.glob("training_log_*.txt"))
    assert "Unlabeled pool: 10 cases (8 split, 2 real, 0 synthetic); per step 2 labeled + 3 unlabeled" in log
    summary = json.loads((output / "validation" / "summary.json").read_text())
    validated = {entry["reference_file"].rsplit("/", 1)[-1][: -len(".png")] for entry in summary["metric_per_case"]}
    assert validated == set(fold["val"])

    checkpoint = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logged = checkpoint["logging"]
    for term in ("supervised", "cps", "cps_weight"):
        assert len(logged[f"train_loss_{term}"]) == 2 and f"train_loss_{term}" in log
    assert logged["train_loss_cps_weight"] == pytest.approx(
        [np.mean([RAMP(i) for i in r]) for r in ((0, 1, 2, 3), (4, 5, 6, 7))]
    )
    assert Image.open(output / "progress_ssl.png").size[1] > 500 and (output / "progress.png").is_file()
    state = checkpoint[CHECKPOINT_KEY]
    assert state["global_iteration"] == 8 and state["attributes"]["steps_seen"] == 8
    assert set(state["networks"]["network2"]) == {"weight", "bias"}
    assert all("momentum_buffer" in s for s in state["optimizers"]["network2"]["state"].values())


def test_resume_restores_extra_state_and_continues_the_iteration_count(trainer_dataset, scheme_environment):
    spec, _ = trainer_dataset
    output = scheme_environment.results / spec.folder_name / f"{SCHEME}__nnUNetPlans__2d" / "fold_0"
    if not (output / "checkpoint_final.pth").is_file():
        run_training(str(TRAINER_DATASET_ID), "2d", 0, SCHEME, device=torch.device("cpu"))
    saved = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)[CHECKPOINT_KEY]

    trainer = get_trainer_from_args(str(TRAINER_DATASET_ID), "2d", 0, SCHEME, continue_training=True,
                                    device=torch.device("cpu"))  # fmt: skip
    maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    assert trainer.current_epoch == 2 and trainer.global_iteration == 8 and trainer.steps_seen == 8
    torch.testing.assert_close(trainer.class_weights, saved["attributes"]["class_weights"])
    torch.testing.assert_close(trainer.network2.state_dict(), saved["networks"]["network2"])
    restored = trainer._extra_optimizers["network2"].state_dict()["state"]
    for index, entry in saved["optimizers"]["network2"]["state"].items():
        torch.testing.assert_close(restored[index]["momentum_buffer"], entry["momentum_buffer"])

    nnUNetTrainerRecordingScheme.steps.clear()
    trainer.num_epochs = 3
    trainer.run_training()
    assert [step["iteration"] for step in nnUNetTrainerRecordingScheme.steps] == [8, 9, 10, 11]
    resumed = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert (
        resumed[CHECKPOINT_KEY]["global_iteration"] == 12 and resumed[CHECKPOINT_KEY]["attributes"]["steps_seen"] == 12
    )
    assert len(resumed["logging"]["train_loss_cps"]) == 3 and len(resumed["logging"]["train_losses"]) == 3


def test_pool_sources_from_environment():
    assert pool_sources(("split", "real"), {}) == ("split", "real")
    assert pool_sources(environ={"nnUNet_ext_pool": " synthetic "}) == ("synthetic",)
    assert pool_sources(environ={"nnUNet_ext_pool": "split, real"}) == ("split", "real")
    for value in ("synth", "real,real", "real,", ","):
        with pytest.raises(ValueError, match=f"nnUNet_ext_pool={value!r}: expected distinct comma-separated"):
            pool_sources(environ={"nnUNet_ext_pool": value})


def test_nnunet_ext_pool_restricts_the_pool_a_run_draws_from(trainer_dataset, scheme_environment, monkeypatch):
    """One split, different pools: only the pool discovery runs (nnU-Net's start and the loaders are skipped)."""
    _, fold = trainer_dataset
    monkeypatch.setattr(nnunet_trainer_module.nnUNetTrainer, "on_train_start", lambda self: None)
    monkeypatch.setattr(nnUNetTrainerRecordingScheme, "get_unlabeled_dataloader", lambda self: None)

    def started(pool: str) -> nnUNetTrainerRecordingScheme:
        monkeypatch.setenv("nnUNet_ext_pool", pool)
        trainer = get_trainer_from_args(str(TRAINER_DATASET_ID), "2d", 0, SCHEME, device=torch.device("cpu"))
        trainer.on_train_start()
        return trainer

    trainer = started("real")
    assert set(trainer.unlabeled_pool.image_files) == {"real/ul_0", "real/ul_1"}
    assert "Unlabeled sources from nnUNet_ext_pool: real" in Path(trainer.log_file).read_text()
    assert set(started("split").unlabeled_pool.image_files) == {f"split/{case}" for case in fold["unlabeled"]}
    assert len(started("split,real").unlabeled_pool.image_files) == len(fold["unlabeled"]) + 2
    with pytest.raises(EmptyPoolError, match=r"sources synthetic;(.|\n)*draws only from synthetic"):
        started("synthetic")


# -------------------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def errors_dataset(synthetic_2d, copy_prepared_dataset):
    return copy_prepared_dataset(synthetic_2d, ERRORS_DATASET_ID)


def start() -> None:
    """Start training the recording scheme on the errors dataset (fails before the data loaders if the pool is bad)."""
    trainer = get_trainer_from_args(str(ERRORS_DATASET_ID), "2d", 0, SCHEME, device=torch.device("cpu"))
    trainer.on_train_start()


def test_empty_and_mismatched_pools_stop_training_with_clear_messages(errors_dataset, scheme_environment):
    preprocessed = scheme_environment.preprocessed / errors_dataset.folder_name
    (preprocessed / "nnUNetPlans_3d_fullres_unlabeled" / "real").mkdir(parents=True)  # another configuration's pool
    with pytest.raises(EmptyPoolError) as error:
        start()
    message = str(error.value)
    assert "No unlabeled cases" in message and "nnUNetv2_ext_preprocess_unlabeled -d ID -c CONFIGURATION" in message
    assert "nnUNetv2_ext_ssl_split -d ID --labeled-fraction" in message
    assert "Pools exist for other plans/configurations only: nnUNetPlans_3d_fullres_unlabeled" in message

    raw = scheme_environment.raw / errors_dataset.folder_name
    (raw / "imagesUl").mkdir(exist_ok=True)
    Image.open(raw / "imagesTr" / "synth_tr_000_0000.png").save(raw / "imagesUl" / "u_0000.png")
    preprocess_pool(ERRORS_DATASET_ID, "2d", pool="real", num_processes=0)
    pool = preprocessed / "nnUNetPlans_2d_unlabeled"
    manifest = json.loads((pool / "real.json").read_text())
    (pool / "real.json").write_text(json.dumps({**manifest, "plans_fingerprint": "f" * 64}))
    with pytest.raises(StalePoolError, match="preprocessed with other plans than this training uses"):
        start()

    (pool / "real.json").write_text(json.dumps(manifest))
    two_channels = np.zeros((2, 1, *errors_dataset.shape), dtype=np.float32)
    blosc2.asarray(two_channels, urlpath=str(pool / "real" / "u.b2nd"), mode="w")
    with pytest.raises(StalePoolError, match=r"real/u\.b2nd: 2 channel\(s\), the network takes 1"):
        start()

    preprocess_pool(ERRORS_DATASET_ID, "2d", pool="real", num_processes=0, overwrite=True)
    splits_final = json.loads((preprocessed / "splits_final.json").read_text())
    fold = {"labeled": splits_final[0]["train"][1:], "unlabeled": [], "val": splits_final[0]["val"]}
    (preprocessed / "splits_ssl.json").write_text(json.dumps({"folds": [fold]}))
    with pytest.raises(SplitMismatchError, match="derived from another"):
        start()


def test_a_scheme_without_scheme_architecture_refuses_a_supervised_trainer():
    from nnunet_ext.trainers.cmunext import nnUNetTrainerCMUNeXt
    from nnunet_ext.trainers.semi_supervised import nnUNetTrainerSemiSupervisedBase

    with pytest.raises(TypeError, match="defines no scheme_architecture"):
        type(
            "nnUNetTrainerNoScheme_CMUNeXt",
            (nnUNetTrainerSemiSupervisedBase,),
            {"supervised_trainer": nnUNetTrainerCMUNeXt},
        )
