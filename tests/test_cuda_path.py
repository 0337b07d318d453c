"""Every trainer family trains the way nnU-Net trains on CUDA, forced on the CPU (``tests/cuda_path.py``): one real
``train_step`` compiled with inductor equals the eager step (loss within 1e-4, gradient norm within 1e-3, relative);
float16 autocast with a GradScaler and bfloat16 autocast stay within 1e-2 of its loss; everything finite. Random
draws in forward stay random in compiled networks, deep supervision switches off on them, and checkpoints move
between compiled and eager trainers.

The default tier runs, per family, one trainer compiled (``aot_eager``), in float16 and in bfloat16; the rest of the
matrix, every trainer compiled with inductor and in both autocast dtypes, is marked ``compile``
(``pytest -m compile``): inductor's C++ code generation takes minutes per network on 2 CPU cores, and float16
convolutions are emulated on the CPU.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from cuda_path import (
    AUTOCAST_DTYPES,
    MODES,
    StepResult,
    compile_like_nnunet_on_cuda,
    conv3d_padded_explicitly,
    force_cuda_path,
    one_train_step,
    small_setting,
)
from dynamic_network_architectures.building_blocks.regularization import DropPath as DNADropPath
from monai.networks.layers import DropPath as MonaiDropPath
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from torch._dynamo import OptimizedModule

import nnunet_ext  # noqa: F401  (the trainer lookup, when the startup hook is absent)
from nnunet_ext.benchmark.trainer_step import initialised_trainer, trainer_train_step
from nnunet_ext.checkpoints import load_training_checkpoint
from nnunet_ext.networks.mgcc import AUX_PERTURBATIONS
from nnunet_ext.registration import registered_trainer_names
from nnunet_ext.trainers.cmunext import nnUNetTrainerCMUNeXt_S
from nnunet_ext.trainers.guidednet import nnUNetTrainerGuidedNet_CMUNeXt
from nnunet_ext.trainers.mgcc import nnUNetTrainerMGCC_CMUNeXt
from nnunet_ext.trainers.semi_supervised import CHECKPOINT_KEY

SETTINGS = {
    "2d": small_setting((64, 64)),
    "3d": small_setting((16, 32, 32)),
}
#: (trainer, setting) per family; the first of each family is the default tier's
FAMILIES: dict[str, list[tuple[str, str]]] = {
    "CMUNeXt": [
        ("nnUNetTrainerCMUNeXt_S", "2d"),
        ("nnUNetTrainerCMUNeXt", "2d"),
        ("nnUNetTrainerCMUNeXt_L", "2d"),
        ("nnUNetTrainerCMUNeXt_S", "3d"),
        ("nnUNetTrainerCMUNeXt", "3d"),
        ("nnUNetTrainerCMUNeXt_L", "3d"),
    ],
    "GCGLE-Net": [("nnUNetTrainerGCGLE", "2d")],
    "GCtx-UNet": [("nnUNetTrainerGCTxUNet_MLP3", "2d"), ("nnUNetTrainerGCTxUNet", "2d")],
    "GCT-UNet": [("nnUNetTrainerGCTUNet", "2d"), ("nnUNetTrainerGCTUNet", "3d")],
    "MGCC": [
        ("nnUNetTrainerMGCC_CMUNeXt", "2d"),
        ("nnUNetTrainerMGCC", "2d"),
        ("nnUNetTrainerMGCC_GCGLE", "2d"),
        ("nnUNetTrainerMGCC_GCTxUNet", "2d"),
        ("nnUNetTrainerMGCC_GCTUNet", "2d"),
    ],
    "GuidedNet": [
        ("nnUNetTrainerGuidedNet_CMUNeXt", "2d"),
        ("nnUNetTrainerGuidedNet", "2d"),
        ("nnUNetTrainerGuidedNet_GCGLE", "2d"),
        ("nnUNetTrainerGuidedNet_GCTxUNet", "2d"),
        ("nnUNetTrainerGuidedNet_GCTUNet", "2d"),
    ],
    "LabeledOnly": [("nnUNetTrainerLabeledOnly_CMUNeXt", "2d"), ("nnUNetTrainerLabeledOnly", "2d")],
}
CASES = [case for cases in FAMILIES.values() for case in cases]
#: trainers whose perturbation thresholds a LayerNorm output's channel mean: stepped with trained-like LayerNorm
#: values (``spread_layer_norm_affine``), else MGCC's feature dropout mask is float rounding
LAYER_NORM_THRESHOLDED = {"nnUNetTrainerMGCC_GCTxUNet"}


@pytest.fixture(autouse=True)
def fresh_compiler_caches():
    """Each test compiles from scratch: dynamo's per-code-object caches (and their recompile limit) start empty;
    inductor draws random numbers with eager's generator, so seeded draws of a compiled step equal eager ones."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


DEFAULT_TIER = {cases[0] for cases in FAMILIES.values()}
#: a 3D trainer in bfloat16 in the default tier too: the emulation's padded 3D convolutions (``tests/cuda_path.py``)
DEFAULT_TIER_BFLOAT16 = DEFAULT_TIER | {("nnUNetTrainerGCTUNet", "3d")}


def case_id(case: tuple[str, str]) -> str:
    return f"{case[0].removeprefix('nnUNetTrainer')}-{case[1]}"


def compiled_cases() -> list:
    """Per family, one trainer compiled with ``aot_eager`` in the default tier (dynamo's capture, AOTAutograd's
    joint graph, decompositions and functionalisation, without code generation); every trainer compiled with
    inductor under ``compile`` (its C++ code generation takes minutes per network on 2 CPU cores)."""
    default_tier = [
        pytest.param(case, "aot_eager", id=f"{case_id(case)}-aot_eager") for case in CASES if case in DEFAULT_TIER
    ]
    return default_tier + [
        pytest.param(case, "inductor", id=f"{case_id(case)}-inductor", marks=pytest.mark.compile) for case in CASES
    ]


@functools.cache
def eager_step(case: tuple[str, str]) -> StepResult:
    return step_of(case, "eager")


def step_in_mode(
    monkeypatch: pytest.MonkeyPatch, case: tuple[str, str], mode: str, backend: str = "inductor"
) -> StepResult:
    force_cuda_path(monkeypatch, mode, backend)
    return step_of(case, mode)


def step_of(case: tuple[str, str], mode: str) -> StepResult:
    trainer, setting = case
    trainer_class = recursive_find_trainer_class_by_name(trainer)
    return one_train_step(trainer_class, SETTINGS[setting], mode, spread_layer_norms=trainer in LAYER_NORM_THRESHOLDED)


def assert_finite(result: StepResult) -> None:
    assert math.isfinite(result.loss) and math.isfinite(result.gradient_norm) and result.gradient_norm > 0
    assert all(math.isfinite(value) for value in result.terms.values()), result.terms
    assert result.parameters_finite


@pytest.mark.parametrize("case, backend", compiled_cases())
def test_compiled_step_equals_the_eager_step(monkeypatch, case, backend):
    eager, compiled = eager_step(case), step_in_mode(monkeypatch, case, "compiled", backend)
    assert_finite(compiled)
    assert compiled.loss == pytest.approx(eager.loss, rel=1e-4)
    assert compiled.gradient_norm == pytest.approx(eager.gradient_norm, rel=1e-3)
    assert compiled.terms == pytest.approx(eager.terms, rel=1e-4, abs=1e-6)


def mixed_precision_cases() -> list:
    """float16 (with the GradScaler) and bfloat16 for one trainer per family (bfloat16 also for GCT-UNet 3D) in the
    default tier, for the others under ``compile`` (float16 convolutions are emulated on the CPU: up to minutes per
    step)."""
    return [
        pytest.param(
            case,
            mode,
            id=f"{case_id(case)}-{mode}",
            marks=()
            if case in (DEFAULT_TIER_BFLOAT16 if mode == "bfloat16" else DEFAULT_TIER)
            else pytest.mark.compile,
        )
        for case in CASES
        for mode in MODES
        if mode in AUTOCAST_DTYPES
    ]


@pytest.mark.parametrize("case, mode", mixed_precision_cases())
def test_mixed_precision_step_is_close_to_the_eager_step(monkeypatch, case, mode):
    eager, mixed = eager_step(case), step_in_mode(monkeypatch, case, mode)
    assert_finite(eager)
    assert_finite(mixed)
    assert mixed.loss == pytest.approx(eager.loss, rel=1e-2)


@pytest.mark.parametrize("padding", [0, 2, (1, 2, 3), "same"])
def test_explicitly_padded_conv3d_of_the_cpu_emulation_equals_conv3d(padding):
    """The harness's 3D convolution under autocast (``conv3d_padded_explicitly``): values and gradients of
    ``F.conv3d``."""
    torch.manual_seed(0)
    x, weight, bias = (torch.randn(*shape, requires_grad=True) for shape in [(2, 4, 5, 8, 8), (2, 4, 3, 5, 7), (2,)])
    results = []
    for conv3d in (torch.nn.functional.conv3d, functools.partial(conv3d_padded_explicitly, torch.nn.functional.conv3d)):
        y = conv3d(x, weight, bias, padding=padding)
        results.append((y, *torch.autograd.grad(y.square().sum(), (x, weight, bias))))
    for expected, actual in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)  # float32 sums in another order


# ---------------------------------------------------------------------------------- randomness and mode switches
@pytest.mark.parametrize("perturb", [*AUX_PERTURBATIONS, MonaiDropPath(0.5), DNADropPath(0.5)], ids=repr)
def test_random_draws_in_forward_stay_random_from_call_to_call_when_compiled(perturb):
    """MGCC's feature dropout threshold, dropout, feature noise and both drop-path layers draw anew in every call of
    the compiled function, as in eager mode (a draw baked into the traced graph would repeat)."""
    torch.manual_seed(0)
    x = torch.rand(32, 8, 16, 16) + 0.1  # 32 samples: two drop-path calls keep the same samples with p = 2**-32
    for run in (perturb, torch.compile(perturb, backend="aot_eager", fullgraph=True)):
        outputs = [run(x) for _ in range(4)]
        assert all(not torch.equal(a, b) for a, b in itertools.combinations(outputs, 2))


def test_mgcc_auxiliary_outputs_differ_between_steps_of_the_compiled_network():
    torch.manual_seed(0)
    network = torch.compile(
        nnUNetTrainerMGCC_CMUNeXt.build_network_architecture(
            SETTINGS["2d"].plans_manager, SETTINGS["2d"].configuration_manager, 1, 3, True
        ),
        backend="aot_eager",
    )
    x = torch.randn(2, 1, 64, 64)
    first, second = network(x), network(x)
    assert torch.equal(first[0][0], second[0][0])  # the main decoder is not perturbed
    for aux in range(1, 4):
        assert not torch.equal(first[aux], second[aux])


def trainers_with_distinct_networks() -> list[str]:
    """One registered trainer per network builder (``nnUNetTrainerLabeledOnly_X`` builds ``nnUNetTrainerX``'s)."""
    by_builder: dict[object, str] = {}
    for name in registered_trainer_names():
        by_builder.setdefault(recursive_find_trainer_class_by_name(name).build_network_architecture, name)
    return list(by_builder.values())


def deep_supervision_cases() -> list:
    """Every distinct network; MGCC's and GuidedNet's on GCGLE-Net, GCtx-UNet and GCT-UNet under ``compile`` (dynamo
    traces each for up to a minute on 2 cores): the architecture's switch is covered by its own trainer, the scheme's
    wrapping by the scheme on CMUNeXt and on the plans' U-Net."""
    return [
        pytest.param(
            name,
            marks=pytest.mark.compile
            if name.startswith(("nnUNetTrainerMGCC_", "nnUNetTrainerGuidedNet_"))
            and name.endswith(("_GCGLE", "_GCTxUNet", "_GCTUNet"))
            else (),
        )
        for name in trainers_with_distinct_networks()
    ]


@pytest.mark.parametrize("trainer_name", deep_supervision_cases())
def test_deep_supervision_switches_off_on_the_compiled_network(monkeypatch, trainer_name):
    """nnU-Net compiles, trains with deep supervision, then switches it off for validation and prediction: the
    compiled network of every trainer follows the switch (dynamo guards the decoder's flag and recompiles)."""
    compile_like_nnunet_on_cuda(monkeypatch, backend="eager")
    setting = SETTINGS["2d"]
    trainer = initialised_trainer(recursive_find_trainer_class_by_name(trainer_name), setting, torch.device("cpu"))
    assert isinstance(trainer.network, OptimizedModule)
    x = torch.randn(2, 1, *setting.patch_size)
    trainer.set_deep_supervision_enabled(True)
    trainer.network.train()
    with torch.no_grad():
        trainer.network(x)
        trainer.network.eval()
        with_heads = trainer.network(x)
        trainer.set_deep_supervision_enabled(False)
        final = trainer.network(x)
    assert isinstance(with_heads, (list, tuple)) and len(with_heads) > 1
    assert isinstance(final, torch.Tensor) and final.shape == (2, setting.num_classes, *setting.patch_size)
    torch.testing.assert_close(final, with_heads[0])


# --------------------------------------------------------------------------------- checkpoints between the modes
def trainer_in_mode(monkeypatch, trainer_class: type, compiled: bool):
    with monkeypatch.context() as patch:
        if compiled:
            compile_like_nnunet_on_cuda(patch, backend="eager")
        torch.manual_seed(int(compiled))
        return initialised_trainer(trainer_class, SETTINGS["2d"], torch.device("cpu"))


def state_of(trainer) -> dict[str, torch.Tensor]:
    """Every tensor a resumed run continues from: networks, optimizers, scheme state."""
    checkpoint = trainer.checkpoint_contents()
    tensors = {f"network.{k}": v for k, v in checkpoint["network_weights"].items()}
    scheme = checkpoint.get(CHECKPOINT_KEY, {})
    for name, weights in scheme.get("networks", {}).items():
        tensors |= {f"{name}.{k}": v for k, v in weights.items()}
    for name, value in scheme.get("attributes", {}).items():
        tensors |= {f"{name}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {name: value}
    return {name: value for name, value in tensors.items() if isinstance(value, torch.Tensor)}


@pytest.mark.parametrize("compiled_writer", [True, False], ids=["compiled-to-eager", "eager-to-compiled"])
@pytest.mark.parametrize(
    "trainer_class", [nnUNetTrainerMGCC_CMUNeXt, nnUNetTrainerGuidedNet_CMUNeXt, nnUNetTrainerCMUNeXt_S]
)
def test_checkpoints_move_between_compiled_and_eager_trainers(monkeypatch, tmp_path, trainer_class, compiled_writer):
    """A checkpoint of a compiled trainer (the MGCC network's auxiliary decoders, GuidedNet's second network and class
    weights) resumes an eager trainer and vice versa, and loads into the network nnUNetv2_predict builds."""
    writer = trainer_in_mode(monkeypatch, trainer_class, compiled_writer)
    with monkeypatch.context() as patch:
        if compiled_writer:
            compile_like_nnunet_on_cuda(patch, backend="eager")
        trainer_train_step(writer, torch.randn(4, 1, 64, 64), 3)()
    writer.save_checkpoint(str(tmp_path / "checkpoint_final.pth"))
    checkpoint = load_training_checkpoint(tmp_path / "checkpoint_final.pth")
    assert not [k for k in checkpoint["network_weights"] if k.startswith(("_orig_mod.", "module."))]

    reader = trainer_in_mode(monkeypatch, trainer_class, not compiled_writer)
    reader.load_checkpoint(str(tmp_path / "checkpoint_final.pth"))
    expected, restored = state_of(writer), state_of(reader)
    assert expected.keys() == restored.keys()
    assert all(torch.equal(expected[k], restored[k]) for k in expected)
    assert reader.optimizer.state_dict()["state"].keys() == writer.optimizer.state_dict()["state"].keys()
    assert getattr(reader, "global_iteration", 0) == getattr(writer, "global_iteration", 0)

    # what nnUNetv2_predict does with the file: build the trainer's network, load network_weights strictly
    setting = SETTINGS["2d"]
    network = trainer_class.build_network_architecture(
        setting.plans_manager, setting.configuration_manager, 1, setting.num_classes, False
    )
    network.load_state_dict(checkpoint["network_weights"])
