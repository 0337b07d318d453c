"""Multi-GPU training (``nnUNetv2_train ... -num_gpus 2``) of a supervised trainer, MGCC and GuidedNet, on the CPU:
two processes over gloo.

Each rank builds its trainer as ``nnUNetv2_train -num_gpus 2`` does (inside a process group, so nnU-Net splits the
batch, converts to SyncBatchNorm and wraps in DDP, and the trainers register their extra networks the same way) and
runs real ``train_step`` calls on its share of a fixed global batch. Asserted:

- after the steps both ranks hold identical weights of every network, optimizer states, scheme state (class
  weights) and iteration counter;
- the first step's loss averaged over the ranks (nnU-Net's logged loss) and the state after it (weights of every
  network, optimizer momenta, class weights) equal one process's step on the whole global batch, within
  :data:`RELATIVE_TOLERANCE`;
- each rank draws its labeled and unlabeled samples from its own disjoint shard of the cases;
- a checkpoint is written by rank 0 only, and trainers restored from it (``--c``) on both ranks hold the saved
  state and continue exactly as the run they were saved from;
- every architecture gives every trainable parameter a gradient (DDP's requirement), in one process.

The slow tier runs nnU-Net's own ``run_ddp`` (what ``nnUNetv2_train -num_gpus 2`` spawns) of GuidedNet on a
synthetic dataset, with its real loaders, validation and ``--c``.

nnU-Net 2.8.1 assumes CUDA under DDP; only the test processes are patched, nnunet_ext is not:
``run_ddp``'s ``init_process_group("nccl")`` is replaced by the workers' own gloo group; the ``cuda:rank`` device
nnU-Net picks per rank by the CPU (:func:`cpu_trainer_class`); ``DDP(device_ids=[rank])``, which refuses CPU
modules, by DDP without ``device_ids``; SyncBatchNorm's forward, CUDA-only, by the same synchronisation over gloo
(:func:`cpu_sync_batch_norm`). MGCC's random perturbations are switched off on both sides, so that the two-rank and
the single-process step compute the same function.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import socket
from pathlib import Path

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from cuda_path import small_setting
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import nnunet_ext.networks.mgcc as mgcc_module
import nnunet_ext.trainers.semi_supervised as semi_supervised_module
from nnunet_ext.benchmark.trainer_step import deep_supervision_targets, initialised_trainer, trainer_train_step
from nnunet_ext.registration import find_registered_trainer
from nnunet_ext.ssl.splits import create_ssl_split_file
from nnunet_ext.ssl.unlabeled_data import UnlabeledPool
from nnunet_ext.trainers.base import unwrap_module
from nnunet_ext.trainers.cmunext import nnUNetTrainerCMUNeXt_S
from nnunet_ext.trainers.guidednet import AVERAGE_CHECKPOINT, nnUNetTrainerGuidedNet_CMUNeXt
from nnunet_ext.trainers.mgcc import nnUNetTrainerMGCC_CMUNeXt
from nnunet_ext.trainers.semi_supervised import CHECKPOINT_KEY, nnUNetTrainerSemiSupervisedBase

WORLD_SIZE = 2
#: global batch 4: two samples per rank (one labeled + one unlabeled for the schemes)
SETTING = small_setting((32, 32), batch_size=4)
STEPS = 2
#: the class histogram the KT-CPS state starts from (any non-uniform one)
CLASS_HISTOGRAM = torch.tensor([900.0, 80.0, 20.0])
#: a two-rank step against one process: the mean loss within RELATIVE_TOLERANCE, and every tensor of the state
#: within RELATIVE_TOLERANCE of its largest magnitude plus ZERO_TOLERANCE (for tensors that are zero in exact
#: arithmetic, like the gradients of convolution biases before BatchNorm): float32 sums in another order (gathered
#: Dice, synchronised BatchNorm), amplified by the BatchNorm layers
RELATIVE_TOLERANCE = 1e-3
ZERO_TOLERANCE = 1e-5
TRAINERS = {
    trainer.__name__: trainer
    for trainer in (nnUNetTrainerCMUNeXt_S, nnUNetTrainerMGCC_CMUNeXt, nnUNetTrainerGuidedNet_CMUNeXt)
}
#: the fold's labeled training cases and the unlabeled pool of the sharding test (5: the ranks' shards differ in size)
LABELED_CASES = [f"case{i}" for i in range(5)]
UNLABELED_CASES = [f"real/case{i}" for i in range(5)]
#: MGCC's auxiliary perturbations switched off: their draws depend on the batch's split over the ranks, and the
#: feature-dropout threshold flips positions at float32 rounding differences
DETERMINISTIC_PERTURBATIONS = (nn.Identity(),) * 3


# ------------------------------------------------------------------------------------------------ CPU patches
def cpu_trainer_class(trainer_class: type) -> type:
    """``trainer_class`` (same name) on the CPU without GradScaler where nnU-Net sets ``cuda:rank`` under DDP."""

    class CPUTrainer(trainer_class):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.device, self.grad_scaler = torch.device("cpu"), None

    CPUTrainer.__name__ = CPUTrainer.__qualname__ = trainer_class.__name__
    return CPUTrainer


def cpu_ddp(module: nn.Module, device_ids: list[int] | None = None, **kwargs) -> DistributedDataParallel:
    """``DDP(module, device_ids=[rank])`` of nnU-Net and nnunet_ext for a CPU module: without ``device_ids``."""
    return DistributedDataParallel(module, **kwargs)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over the ranks (nnU-Net's ``AllGatherGrad``, as its batch Dice gathers)."""
    return AllGatherGrad.apply(tensor).sum(0)


def cpu_sync_batch_norm(self: nn.SyncBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """SyncBatchNorm's forward on the CPU: in training, mean and biased variance over every rank's samples (the
    input's ``(N, *S)`` axes) normalise, and the running statistics take the unbiased variance, as torch's CUDA
    SyncBatchNorm does; in evaluation the running statistics."""
    if not self.training:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
    axes = [0, *range(2, x.ndim)]
    shape = (1, -1, *[1] * (x.ndim - 2))
    count = sum_over_ranks(x.new_tensor(x.numel() // x.shape[1]))
    mean = sum_over_ranks(x.sum(axes)) / count
    centred = x - mean.view(shape)
    variance = sum_over_ranks(centred.square().sum(axes)) / count
    with torch.no_grad():
        self.running_mean.lerp_(mean, self.momentum)
        self.running_var.lerp_(variance * count / (count - 1), self.momentum)
        self.num_batches_tracked += 1
    return centred / torch.sqrt(variance.view(shape) + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def patch_for_cpu_ddp() -> None:
    """In a worker process (discarded afterwards): DDP and SyncBatchNorm on CPU tensors, deterministic MGCC."""
    nnunet_trainer_module.DDP = cpu_ddp
    semi_supervised_module.DistributedDataParallel = cpu_ddp
    nn.SyncBatchNorm.forward = cpu_sync_batch_norm
    DistributedDataParallel._passing_sync_batchnorm_handle = lambda self, module: None  # only refuses CPU modules
    mgcc_module.AUX_PERTURBATIONS = DETERMINISTIC_PERTURBATIONS


# ------------------------------------------------------------------------------------------------ training
def global_batch(trainer) -> dict:
    """The fixed global batch of :data:`SETTING`: images (4, 1, 32, 32) and labels per deep-supervision scale."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1)
    data = torch.randn(SETTING.batch_size, SETTING.input_channels, *SETTING.patch_size)
    targets = deep_supervision_targets(trainer, SETTING.batch_size, SETTING.num_classes)
    torch.random.set_rng_state(generator_state)
    return {"data": data, "target": targets}


def rank_batches(trainer, rank: int) -> tuple[dict, torch.Tensor | None]:
    """This rank's labeled batch and unlabeled images of the global batch: of a scheme, the global batch's first
    half is labeled and its second half unlabeled; each rank takes its contiguous share of both halves."""
    batch = global_batch(trainer)
    if isinstance(trainer, nnUNetTrainerSemiSupervisedBase):
        half = SETTING.batch_size // 2
        labeled, unlabeled = slice(0, half), batch["data"][half:]
    else:
        labeled, unlabeled = slice(0, SETTING.batch_size), None
    share = slice(rank * trainer.batch_size, (rank + 1) * trainer.batch_size)
    rank_labeled = {
        "data": batch["data"][labeled][share],
        "target": [t[labeled][share] for t in batch["target"]],
        "keys": [f"labeled{i}" for i in range(trainer.batch_size)],
    }
    if unlabeled is not None:
        unlabeled = unlabeled[rank * trainer.unlabeled_batch_size : (rank + 1) * trainer.unlabeled_batch_size]
    return rank_labeled, unlabeled


def prepared_trainer(trainer_name: str, seed: int = 0):
    """The trainer built and initialised as ``nnUNetv2_train`` does (seeded), its scheme state at its start and its
    ramped weights at full value."""
    torch.manual_seed(seed)
    trainer = initialised_trainer(cpu_trainer_class(TRAINERS[trainer_name]), SETTING, torch.device("cpu"))
    if isinstance(trainer, nnUNetTrainerSemiSupervisedBase):
        trainer.initialise_scheme_state(CLASS_HISTOGRAM)
        trainer.global_iteration = trainer.rampup_end
        for network in trainer.extra_networks.values():
            network.train()
    trainer.network.train()
    return trainer


def train_steps(trainer, labeled: dict, unlabeled: torch.Tensor | None, steps: int) -> list[float]:
    """``steps`` real ``train_step`` calls on the same batch; their losses."""
    if unlabeled is not None:
        keys = [f"unlabeled{i}" for i in range(unlabeled.shape[0])]
        trainer.dataloader_unlabeled = itertools.repeat({"data": unlabeled, "keys": keys})
    return [float(trainer.train_step(labeled)["loss"]) for _ in range(steps)]


def training_state(trainer) -> dict:
    """A copy of everything training continues from: the checkpoint's weights, optimizer and scheme state (extra
    networks, their optimizers, class weights, iteration counter)."""
    contents = trainer.checkpoint_contents()
    keys = ("network_weights", "optimizer_state", CHECKPOINT_KEY)
    return copy.deepcopy({key: contents[key] for key in keys if key in contents})


def shards(trainer) -> dict[str, list[str]]:
    """The cases the trainer's loaders would draw from, for pools of :data:`LABELED_CASES` and
    :data:`UNLABELED_CASES`, and for pools of a single case."""

    class Dataset:
        def __init__(self, folder: str, identifiers: list[str], folder_with_segs_from_previous_stage=None):
            self.identifiers = identifiers

    trainer.dataset_class = Dataset
    result = {}
    for label, labeled_cases, unlabeled_cases in (
        ("", LABELED_CASES, UNLABELED_CASES),
        ("single ", LABELED_CASES[:1], UNLABELED_CASES[:1]),
    ):
        trainer.do_split = lambda cases=list(labeled_cases): (cases, ["validation"])
        result[f"{label}labeled"] = trainer.get_tr_and_val_datasets()[0].identifiers
        if isinstance(trainer, nnUNetTrainerSemiSupervisedBase):
            trainer.unlabeled_pool = UnlabeledPool({key: f"{key}.b2nd" for key in unlabeled_cases})
            result[f"{label}unlabeled"] = trainer.unlabeled_dataset().identifiers
    return result


def ddp_worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank, for every trainer: one step, ``STEPS - 1`` more, a checkpoint, a trainer restored from it and one
    more step of both, the shards of its cases; results to ``folder/{trainer}_rank{rank}.pt``."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    patch_for_cpu_ddp()
    for trainer_name in TRAINERS:
        trainer = prepared_trainer(trainer_name)
        labeled, unlabeled = rank_batches(trainer, rank)
        result = {"losses": train_steps(trainer, labeled, unlabeled, 1), "first_state": training_state(trainer)}
        result["losses"] += train_steps(trainer, labeled, unlabeled, STEPS - 1)
        result["state"] = training_state(trainer)
        result["sync_batch_norm"] = any(isinstance(m, nn.SyncBatchNorm) for m in trainer.network.modules())
        result["wrapped"] = [
            isinstance(network, DistributedDataParallel)
            for network in [trainer.network, *getattr(trainer, "extra_networks", {}).values()]
        ]
        trainer.save_checkpoint(f"{folder}/{trainer_name}_checkpoint_rank{rank}.pth")
        dist.barrier()
        resumed = prepared_trainer(trainer_name, seed=1 + rank)
        resumed.load_checkpoint(f"{folder}/{trainer_name}_checkpoint_rank0.pth")
        result["resumed_state"] = training_state(resumed)
        result["epochs"] = trainer.current_epoch, resumed.current_epoch
        train_steps(trainer, labeled, unlabeled, 1)
        train_steps(resumed, labeled, unlabeled, 1)
        result["continued"], result["resumed_continued"] = training_state(trainer), training_state(resumed)
        result["shards"] = shards(trainer)
        torch.save(result, f"{folder}/{trainer_name}_rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same(actual, expected, path: str = "", relative: float | None = None) -> None:
    """Nested dicts/lists of tensors and values equal: tensors exactly, or with ``relative`` within ``relative`` of
    their largest magnitude plus :data:`ZERO_TOLERANCE`; other values exactly."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), path
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}/{key}", relative)
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), path
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{path}/{index}", relative)
    elif isinstance(expected, torch.Tensor):
        atol = 0.0 if relative is None else relative * float(expected.abs().max()) + ZERO_TOLERANCE
        torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f"{path}: {m}")
    else:
        assert actual == expected, path


def optimizer_state_as_in(state: dict, reference: dict) -> dict:
    """``state`` with each optimizer's per-parameter state narrowed to the parameters that have one in
    ``reference``: nnU-Net weights its lowest deep-supervision output 1e-6 under DDP instead of 0, so only the DDP
    run has gradients, hence momentum, for that output's head."""
    state = copy.deepcopy(state)
    optimizers = [(state["optimizer_state"], reference["optimizer_state"])]
    if CHECKPOINT_KEY in reference:
        scheme, scheme_reference = state[CHECKPOINT_KEY]["optimizers"], reference[CHECKPOINT_KEY]["optimizers"]
        optimizers += [(scheme[name], scheme_reference[name]) for name in scheme_reference]
    for optimizer, optimizer_reference in optimizers:
        optimizer["state"] = {key: optimizer["state"][key] for key in optimizer_reference["state"]}
    return state


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    """The folder holding every trainer's results of both ranks and the checkpoints they wrote."""
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(ddp_worker, args=(WORLD_SIZE, free_port(), str(folder)), nprocs=WORLD_SIZE, join=True)
    return folder


def rank_results(folder: Path, trainer_name: str) -> list[dict]:
    return [torch.load(folder / f"{trainer_name}_rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@pytest.fixture
def single_process(monkeypatch):
    """This process for one-process training: one torch thread, MGCC's perturbations as in the workers."""
    monkeypatch.setattr(mgcc_module, "AUX_PERTURBATIONS", DETERMINISTIC_PERTURBATIONS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_every_network_is_ddp_wrapped_with_sync_batch_norm_and_ranks_stay_identical(ddp_runs, trainer_name):
    rank0, rank1 = rank_results(ddp_runs, trainer_name)
    assert rank0["wrapped"] == [True] * (2 if "GuidedNet" in trainer_name else 1)
    assert rank0["sync_batch_norm"]
    if CHECKPOINT_KEY in rank0["state"]:
        scheme = rank0["state"][CHECKPOINT_KEY]
        assert scheme["global_iteration"] == prepared_trainer(trainer_name).rampup_end + STEPS
        if "GuidedNet" in trainer_name:
            assert not torch.equal(scheme["attributes"]["ktcps_weights"]["weights"][0], CLASS_HISTOGRAM)
    assert_same(rank1["state"], rank0["state"])


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_a_two_rank_step_equals_one_process_on_the_global_batch(ddp_runs, trainer_name, single_process):
    ranks = rank_results(ddp_runs, trainer_name)
    trainer = prepared_trainer(trainer_name)
    labeled, unlabeled = rank_batches(trainer, 0)
    (loss,) = train_steps(trainer, labeled, unlabeled, 1)
    assert sum(rank["losses"][0] for rank in ranks) / WORLD_SIZE == pytest.approx(loss, rel=RELATIVE_TOLERANCE)
    state = training_state(trainer)
    assert_same(optimizer_state_as_in(ranks[0]["first_state"], state), state, relative=RELATIVE_TOLERANCE)


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_ranks_draw_from_disjoint_shards_of_the_cases(ddp_runs, trainer_name):
    rank0, rank1 = (rank["shards"] for rank in rank_results(ddp_runs, trainer_name))
    pools = {"labeled": LABELED_CASES}
    if issubclass(TRAINERS[trainer_name], nnUNetTrainerSemiSupervisedBase):
        pools["unlabeled"] = sorted(UNLABELED_CASES)
    for pool, cases in pools.items():
        assert rank0[pool] == cases[0::2] and rank1[pool] == cases[1::2]
        assert rank0[f"single {pool}"] == rank1[f"single {pool}"] == cases[:1]  # fewer cases than ranks: all


def test_one_process_draws_from_every_case(single_process):
    assert shards(prepared_trainer("nnUNetTrainerMGCC_CMUNeXt")) == {
        "labeled": LABELED_CASES,
        "unlabeled": sorted(UNLABELED_CASES),
        "single labeled": LABELED_CASES[:1],
        "single unlabeled": UNLABELED_CASES[:1],
    }


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_rank_0_writes_the_checkpoint_and_both_ranks_resume_from_it(ddp_runs, trainer_name):
    assert (ddp_runs / f"{trainer_name}_checkpoint_rank0.pth").is_file()
    assert not (ddp_runs / f"{trainer_name}_checkpoint_rank1.pth").exists()
    for rank in rank_results(ddp_runs, trainer_name):
        assert rank["epochs"] == (0, 1)  # nnU-Net checkpoints at an epoch's end: --c goes on with the next one
        assert_same(rank["resumed_state"], rank["state"])
        assert_same(rank["resumed_continued"], rank["continued"])


#: one trainer per architecture (the schemes' auxiliary decoders and second networks included)
EVERY_ARCHITECTURE = (
    "nnUNetTrainerCMUNeXt_S",
    "nnUNetTrainerGCGLE",
    "nnUNetTrainerGCTxUNet",
    "nnUNetTrainerGCTUNet",
    "nnUNetTrainerMGCC",
    "nnUNetTrainerMGCC_GCTxUNet",
    "nnUNetTrainerGuidedNet_GCTxUNet",
    "nnUNetTrainerLabeledOnly",
)


@pytest.mark.parametrize("trainer_name", EVERY_ARCHITECTURE)
def test_every_trained_parameter_gets_a_gradient_as_ddp_requires(trainer_name, single_process):
    """nnU-Net wraps in DDP with ``find_unused_parameters=False``: a trainable parameter without a gradient stops
    training at the second step. One step of one process: only the lowest deep-supervision head may have none (nnU-Net
    weights it 0 here and 1e-6 under DDP)."""
    setting = small_setting((64, 64))
    torch.manual_seed(0)
    trainer = initialised_trainer(find_registered_trainer(trainer_name), setting, torch.device("cpu"))
    trainer_train_step(trainer, torch.randn(setting.batch_size, 1, 64, 64), setting.num_classes)()
    for network in [trainer.network, *getattr(trainer, "extra_networks", {}).values()]:
        decoder = unwrap_module(network).decoder
        heads = decoder.seg_heads if hasattr(decoder, "seg_heads") else decoder.seg_layers  # ours, nnU-Net's
        lowest_head = {id(p) for p in heads[0].parameters()}
        without_gradient = [
            name
            for name, p in network.named_parameters()
            if p.requires_grad and p.grad is None and id(p) not in lowest_head
        ]
        assert without_gradient == []


# ------------------------------------------------------------------------------------------------ nnU-Net's run_ddp
E2E_DATASET_ID = 979
E2E_TRAINER = "nnUNetTrainerGuidedNet_CMUNeXt"
#: the first run: 1 epoch of 3 iterations; the resumed one (``--c``) adds a second epoch. Augmentation in the
#: training processes (no worker processes per loader and rank)
E2E_ENVIRONMENT = {
    "nnUNet_ext_num_iterations_per_epoch": "3",
    "nnUNet_ext_num_val_iterations_per_epoch": "1",
    "nnUNet_n_proc_DA": "0",
}


def gloo_process_group(rank: int, world_size: int) -> None:
    """``run_ddp``'s ``setup_ddp`` over gloo instead of NCCL."""
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def cpu_trainer_from_args(get_trainer_from_args, *args, **kwargs):
    """``run_ddp``'s trainer (built for ``cuda:rank``) on the CPU without GradScaler, before it initialises."""
    trainer = get_trainer_from_args(*args, **kwargs)
    trainer.device, trainer.grad_scaler = torch.device("cpu"), None
    return trainer


def run_ddp_worker(rank: int, world_size: int, port: int, continue_training: bool, folder: str) -> None:
    """nnU-Net's own ``run_ddp`` of :data:`E2E_TRAINER` (training, checkpoints, validation) on the CPU over gloo;
    the iteration and the sample keys of every step to ``folder/steps_rank{rank}.json``."""
    import nnunetv2.run.run_training as run_training_module

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    patch_for_cpu_ddp()
    run_training_module.setup_ddp = gloo_process_group
    run_training_module.get_trainer_from_args = functools.partial(
        cpu_trainer_from_args, run_training_module.get_trainer_from_args
    )
    torch.cuda.set_device = lambda device: None
    nnunet_trainer_module.default_num_processes = 1
    steps = []
    trainer_class = TRAINERS[E2E_TRAINER]
    compute_scheme_loss = trainer_class.compute_scheme_loss

    def recording_scheme_loss(self, batch):
        steps.append(
            {"iteration": self.global_iteration, "labeled": batch.labeled_keys, "unlabeled": batch.unlabeled_keys}
        )
        return compute_scheme_loss(self, batch)

    trainer_class.compute_scheme_loss = recording_scheme_loss
    args = (str(E2E_DATASET_ID), "2d", 0, E2E_TRAINER, "nnUNetPlans", False, continue_training, False, None, False)
    run_training_module.run_ddp(rank, *args, False, world_size)
    Path(folder, f"steps_rank{rank}.json").write_text(json.dumps(steps))


@pytest.fixture(scope="module")
def e2e_dataset(synthetic_2d, copy_prepared_dataset, nnunet_environment):
    """Copy of the 2D dataset with the plans' batch lowered to 4 (2 per rank) and ``splits_ssl.json`` of 6 labeled
    cases per fold (fold 0's other training cases are the pool); returns the fold."""
    spec = copy_prepared_dataset(synthetic_2d, E2E_DATASET_ID)
    plans_file = nnunet_environment.preprocessed / spec.folder_name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["2d"]["batch_size"] = 4
    plans_file.write_text(json.dumps(plans, indent=4))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in nnunet_environment.env.items():
            patch.setenv(name, value)
        _, content, _ = create_ssl_split_file(E2E_DATASET_ID, labeled_count=6, seed=0)
    return spec, content["folds"][0]


def run_ddp_training(folder: Path, continue_training: bool) -> list[list[dict]]:
    """Both ranks' recorded steps of one ``run_ddp``."""
    mp.spawn(run_ddp_worker, args=(WORLD_SIZE, free_port(), continue_training, str(folder)), nprocs=WORLD_SIZE)
    return [json.loads((folder / f"steps_rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


@pytest.mark.ddp
def test_nnunet_run_ddp_trains_checkpoints_and_resumes_a_scheme(e2e_dataset, nnunet_paths, monkeypatch, tmp_path):
    """Training, then ``--c`` for one more epoch: every step's labeled and unlabeled cases come from the rank's
    shard, both ranks count the same iterations, the checkpoints (also the averaged one) and the validation are
    written, and the resumed run goes on from the first one's iteration count."""
    spec, fold = e2e_dataset
    for name, value in E2E_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    pool = sorted(f"split/{case}" for case in fold["unlabeled"])
    output = nnunet_paths.results / spec.folder_name / f"{E2E_TRAINER}__nnUNetPlans__2d" / "fold_0"

    for epochs, continue_training, iterations in ((1, False, [0, 1, 2]), (2, True, [3, 4, 5])):
        monkeypatch.setenv("nnUNet_ext_num_epochs", str(epochs))
        rank0, rank1 = run_ddp_training(tmp_path, continue_training)
        assert [s["iteration"] for s in rank0] == [s["iteration"] for s in rank1] == iterations
        for rank, steps in enumerate((rank0, rank1)):
            assert {key for s in steps for key in s["labeled"]} <= set(sorted(fold["labeled"])[rank::WORLD_SIZE])
            assert {key for s in steps for key in s["unlabeled"]} <= set(pool[rank::WORLD_SIZE])
        checkpoint = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert checkpoint["current_epoch"] == epochs and checkpoint[CHECKPOINT_KEY]["global_iteration"] == 3 * epochs
        assert len(checkpoint["logging"]["train_loss_ktcps"]) == epochs
        assert (output / AVERAGE_CHECKPOINT).is_file() and (output / "validation" / "summary.json").is_file()
