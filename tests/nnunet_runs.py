"""An isolated nnU-Net installation for tests: its folders and environment, the literal console scripts run in
subprocesses, and the short training schedule they train with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnunet_ext.data.synthetic import SyntheticDatasetSpec

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

    def trained(self, dataset_id: int, configuration: str, trainer: str) -> Path:
        """The fold-0 folder of ``trainer`` trained on ``SHORT_SCHEDULE`` (by an earlier test of the session, else
        now)."""
        results = [p for p in self.results.glob(f"Dataset{dataset_id:03d}_*/{trainer}__nnUNetPlans__{configuration}")]
        if results and (results[0] / "fold_0" / "checkpoint_final.pth").is_file():
            return results[0] / "fold_0"
        return self.train(dataset_id, configuration, trainer)

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
