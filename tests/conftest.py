"""Shared fixtures: an isolated nnU-Net environment and preprocessed synthetic datasets (built once per session), and
the test tiers (markers ``slow`` and ``compile``; the README names the command of each tier).

Tests run on 2 CPU cores: nnU-Net's worker pools are capped at 2 (``nnUNet_def_n_proc``, ``nnUNet_n_proc_DA``)
and prediction runs sequentially (``-npp 0 -nps 0``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest
from nnunet_runs import NNUNetEnvironment

from nnunet_ext.data.synthetic import SyntheticDatasetSpec, generate_synthetic_dataset

MARKERS = {
    "slow": "runs nnU-Net's console scripts or trains end to end in subprocesses",
    "compile": "the CUDA-path matrix beyond the default tier: every trainer compiled (inductor) and in float16",
    "ddp": "nnU-Net's own multi-process (DDP) training entry point end to end over gloo (minutes)",
}
#: tiers that run only when ``-m`` names them
OPT_IN_MARKERS = ("compile", "ddp")


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs the isolated nnU-Net environment (it runs nnU-Net's console scripts, or prepares a
    dataset with them) is ``slow``. Tests of an :data:`OPT_IN_MARKERS` tier run only when ``-m`` names it."""
    for item in items:
        if "nnunet_environment" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    named = config.getoption("markexpr")
    skipped_tiers = [marker for marker in OPT_IN_MARKERS if marker not in named]
    deselected = [item for item in items if any(item.get_closest_marker(m) is not None for m in skipped_tiers)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(scope="session")
def nnunet_environment(tmp_path_factory) -> NNUNetEnvironment:
    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir()
        env[f"nnUNet_{name}"] = str(root / name)
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2", "nnUNet_compile": "f"})
    return NNUNetEnvironment(root, env)


def _prepared(environment: NNUNetEnvironment, spec: SyntheticDatasetSpec, configuration: str) -> SyntheticDatasetSpec:
    generate_synthetic_dataset(spec, environment.raw)
    environment.run(
        "nnUNetv2_plan_and_preprocess",
        "-d",
        str(spec.dataset_id),
        "-c",
        configuration,
        "-np",
        "2",
        "-npfp",
        "2",
        "--verify_dataset_integrity",
    )
    return spec


@pytest.fixture(scope="session")
def synthetic_2d(nnunet_environment) -> SyntheticDatasetSpec:
    """Dataset 990: 2D PNG, 16 training + 3 test cases of 96x96, 3 foreground classes; planned, preprocessed 2d."""
    spec = SyntheticDatasetSpec(dataset_id=990, shape=(96, 96), num_training=16, num_test=3)
    return _prepared(nnunet_environment, spec, "2d")


@pytest.fixture(scope="session")
def synthetic_3d(nnunet_environment) -> SyntheticDatasetSpec:
    """Dataset 991: 3D NIfTI, anisotropic (spacing 3 x 1 x 1 mm), 10 + 2 cases of 16x48x48; preprocessed 3d_fullres."""
    spec = SyntheticDatasetSpec(
        dataset_id=991, shape=(16, 48, 48), spacing=(3.0, 1.0, 1.0), num_training=10, num_test=2
    )
    return _prepared(nnunet_environment, spec, "3d_fullres")


@pytest.fixture(scope="session")
def copy_prepared_dataset(nnunet_environment):
    """Factory: copy a prepared dataset (raw and preprocessed folders) under a new ID, for tests that change it.

    ``copy_prepared_dataset(spec, dataset_id) -> spec of the copy``; the plans name the copy.
    """

    def copy(spec: SyntheticDatasetSpec, dataset_id: int) -> SyntheticDatasetSpec:
        target = replace(spec, dataset_id=dataset_id)
        for root in (nnunet_environment.raw, nnunet_environment.preprocessed):
            shutil.copytree(root / spec.folder_name, root / target.folder_name)
        for plans_file in (nnunet_environment.preprocessed / target.folder_name).glob("*Plans*.json"):
            plans = json.loads(plans_file.read_text())
            plans["dataset_name"] = target.folder_name
            plans_file.write_text(json.dumps(plans, indent=4))
        return target

    return copy


@pytest.fixture
def nnunet_paths(monkeypatch, nnunet_environment) -> NNUNetEnvironment:
    """The isolated nnU-Net environment's variables set in this process, for in-process nnU-Net calls."""
    for name, value in nnunet_environment.env.items():
        if name.startswith("nnUNet_"):
            monkeypatch.setenv(name, value)
    return nnunet_environment
