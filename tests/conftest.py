"""Shared fixtures: an isolated nnU-Net environment and preprocessed synthetic datasets (built once per session).

Tests run on 2 CPU cores: nnU-Net's worker pools are capped at 2 (``nnUNet_def_n_proc``, ``nnUNet_n_proc_DA``)
and prediction runs sequentially (``-npp 0 -nps 0``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from nnunet_ext.data.synthetic import SyntheticDatasetSpec, generate_synthetic_dataset

SHORT_SCHEDULE = {
    "nnUNet_ext_num_epochs": "2",
    "nnUNet_ext_num_iterations_per_epoch": "4",
    "nnUNet_ext_num_val_iterations_per_epoch": "2",
}


@dataclass
class NNUNetEnvironment:
    """Folders of an isolated nnU-Net installation and the environment that points at them."""

    root: Path
    env: dict[str, str]

    @property
    def raw(self) -> Path:
        return Path(self.env["nnUNet_raw"])

    @property
    def preprocessed(self) -> Path:
        return Path(self.env["nnUNet_preprocessed"])

    @property
    def results(self) -> Path:
        return Path(self.env["nnUNet_results"])

    def run(self, *command: str, extra_env: dict[str, str] | None = None, timeout: float = 900) -> str:
        """Run a console script (found beside this interpreter) and return its output; fail the test on error."""
        executable = shutil.which(command[0], path=os.path.dirname(sys.executable)) or command[0]
        env = {**self.env, **(extra_env or {})}
        result = subprocess.run([executable, *command[1:]], env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{output}")
        return result.stdout + result.stderr

    def train(
        self, dataset_id: int, configuration: str, trainer: str, *options: str, schedule: dict[str, str] | None = None
    ) -> Path:
        """``nnUNetv2_train ID CONFIGURATION 0 -tr TRAINER -device cpu [options]`` on ``schedule`` (default:
        ``SHORT_SCHEDULE``); returns the fold-0 output folder."""
        self.run(
            "nnUNetv2_train",
            str(dataset_id),
            configuration,
            "0",
            "-tr",
            trainer,
            "-device",
            "cpu",
            *options,
            extra_env=schedule or SHORT_SCHEDULE,
        )
        folder_name = next(p.name for p in self.results.iterdir() if p.name.startswith(f"Dataset{dataset_id:03d}_"))
        return self.results / folder_name / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"

    def predict(self, spec: SyntheticDatasetSpec, configuration: str, trainer: str, output: Path) -> Path:
        """Sequential ``nnUNetv2_predict`` of the dataset's imagesTs with fold 0 on the CPU; returns ``output``."""
        self.run(
            "nnUNetv2_predict",
            "-i",
            str(self.raw / spec.folder_name / "imagesTs"),
            "-o",
            str(output),
            "-d",
            str(spec.dataset_id),
            "-c",
            configuration,
            "-tr",
            trainer,
            "-f",
            "0",
            "-device",
            "cpu",
            "-npp",
            "0",
            "-nps",
            "0",
        )
        return output


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
