"""The literal nnU-Net lookup finds registered trainers in fresh interpreters, via the startup hook only."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

from nnunet_ext.registration import ENTRY_POINT_GROUP, TRAINERS


def run_python(code: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_interpreter_start_imports_neither_torch_nor_nnunetv2_but_installs_the_hook():
    result = run_python(
        """
        import sys
        print('torch' in sys.modules, 'nnunetv2' in sys.modules,
              any(type(f).__name__ == '_FindObjectsPatcher' for f in sys.meta_path))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True"]
    assert result.stderr == ""


def test_registered_and_stock_names_resolve_through_nnunet_lookup():
    names = list(TRAINERS)
    result = run_python(
        f"""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
        from nnunetv2.run import run_training
        from nnunetv2.inference import predict_from_raw_data
        assert run_training.recursive_find_trainer_class_by_name is find
        assert predict_from_raw_data.recursive_find_trainer_class_by_name is find
        for name in {names!r}:
            cls = find(name)
            print(name, cls.__module__, cls.__name__)
        for name in ['nnUNetTrainer', 'nnUNetTrainer_5epochs']:
            cls = find(name)
            print(name, cls.__module__, cls.__name__)
        try:
            find('nnUNetTrainerDoesNotExist')
        except RuntimeError as error:
            print('missing', 'Could not find requested nnunet trainer' in str(error))
        """
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for name in names:
        module, class_name = lines[name].split()
        assert module.startswith("nnunet_ext.trainers.") and class_name == name
    assert lines["nnUNetTrainer"].startswith("nnunetv2.training.nnUNetTrainer.nnUNetTrainer ")
    assert lines["nnUNetTrainer_5epochs"].split()[1] == "nnUNetTrainer_5epochs"
    assert lines["missing"] == "True"


def test_late_import_of_nnunet_ext_patches_an_already_imported_nnunetv2():
    result = run_python(
        """
        from nnunetv2.run import run_training
        import nnunet_ext
        cls = run_training.recursive_find_trainer_class_by_name('nnUNetTrainerCMUNeXt')
        print(cls.__module__)
        """,
        "-S",
        env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "nnunet_ext.trainers.cmunext"


def test_a_failing_hook_never_stops_the_interpreter(tmp_path):
    broken = tmp_path / "nnunet_ext"
    broken.mkdir()
    (broken / "__init__.py").write_text("")
    (broken / "_autoload.py").write_text("raise RuntimeError('boom')\n")
    result = run_python("print('alive')", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0
    assert result.stdout.strip() == "alive"
    assert "nnunet_ext autoload failed: RuntimeError('boom')" in result.stderr


def test_installed_entry_points_match_the_registry():
    declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("nnunet_ext.")}
    assert declared == TRAINERS, "reinstall the package: its entry points are out of date"


@pytest.mark.parametrize("name", list(TRAINERS))
def test_every_registered_trainer_is_an_nnunet_trainer_with_the_stock_signature(name):
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.registration import find_registered_trainer

    cls = find_registered_trainer(name)
    assert issubclass(cls, nnUNetTrainer) and cls.__name__ == name
    assert list(inspect.signature(cls.__init__).parameters) == [
        "self",
        "plans",
        "configuration",
        "fold",
        "dataset_json",
        "device",
    ]
    assert "plans_manager" in inspect.signature(cls.build_network_architecture).parameters
