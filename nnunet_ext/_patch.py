"""The patches applied to nnU-Net's lookups by name.

- ``nnunetv2.utilities.find_objects.recursive_find_trainer_class_by_name``: registered trainer names
  (:mod:`nnunet_ext.registration`) resolve first; every other name falls through to nnU-Net's own lookup, unchanged,
  including its ``nnUNet_extTrainer`` search path.
- ``recursive_find_python_class`` as ``nnunetv2.experiment_planning.plan_and_preprocess_api`` uses it (the ``-pl``
  of ``nnUNetv2_plan_experiment``): ``ExtPlanner_<trainer>`` resolves to the planner
  :data:`nnunet_ext.registration.PLANNER_FACTORY` builds; every other name falls through unchanged.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

PATCH_FLAG = "_nnunet_ext_patched"
_MODULES_IMPORTING_THE_LOOKUP = ("nnunetv2.run.run_training", "nnunetv2.inference.predict_from_raw_data")
_torchvision_schemas = None


def _make_torchvision_importable() -> None:
    """Let nnU-Net's stock trainer walk import torchvision beside a CPU-only build of torch.

    nnU-Net's stock lookup imports every trainer module, and the Primus trainers import timm, which imports
    torchvision. The upstream problem: PyPI's torchvision wheel (0.28.0 for torch 2.13.0) is built against the CUDA
    build of torch; its ``_C.so`` links ``libtorch_cuda.so``/``libc10_cuda.so``, which the CPU build of torch does
    not ship, so torchvision cannot load its operators, and ``torchvision/_meta_registrations.py`` then fails with
    ``operator torchvision::nms does not exist``, taking every stock trainer name except ``nnUNetTrainer`` down.
    Only when exactly that happens, the two operator schemas it registers fake kernels for (``nms``, ``qnms``) are
    declared (nnU-Net never calls them) and the import is retried; any other torchvision failure propagates.

    It can go when torchvision and torch come from the same build (a CUDA torch, or the CPU wheels of PyTorch's own
    index, ``torchvision==0.28.0+cpu``), or when nnU-Net's lookup stops importing every trainer module.
    """
    global _torchvision_schemas
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error) or _torchvision_schemas is not None:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        import torch

        _torchvision_schemas = torch.library.Library("torchvision", "DEF")
        _torchvision_schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _torchvision_schemas.define("qnms(Tensor dets, Tensor scores, float iou_threshold, float scale) -> Tensor")
        import torchvision  # noqa: F401
    except ImportError:
        return


def _patched_lookup(original: Callable[[str], type]) -> Callable[[str], type]:
    def recursive_find_trainer_class_by_name(trainer_name: str) -> type:
        from nnunet_ext.registration import find_registered_trainer

        trainer_class = find_registered_trainer(trainer_name)
        if trainer_class is None:
            _make_torchvision_importable()
            return original(trainer_name)
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        if not (isinstance(trainer_class, type) and issubclass(trainer_class, nnUNetTrainer)):
            raise TypeError(f"{trainer_class} registered as {trainer_name!r} must inherit from nnUNetTrainer")
        return trainer_class

    setattr(recursive_find_trainer_class_by_name, PATCH_FLAG, True)
    recursive_find_trainer_class_by_name.__wrapped__ = original
    recursive_find_trainer_class_by_name.__doc__ = original.__doc__
    return recursive_find_trainer_class_by_name


def patch_find_objects(find_objects: types.ModuleType) -> None:
    """Replace the lookup in ``find_objects`` and in the modules that imported it by name (idempotent)."""
    original = find_objects.recursive_find_trainer_class_by_name
    if getattr(original, PATCH_FLAG, False):
        return
    patched = _patched_lookup(original)
    find_objects.recursive_find_trainer_class_by_name = patched
    for module_name in _MODULES_IMPORTING_THE_LOOKUP:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "recursive_find_trainer_class_by_name", None) is original:
            module.recursive_find_trainer_class_by_name = patched


def _patched_class_lookup(original: Callable[[str, str, str], type | None]) -> Callable[[str, str, str], type | None]:
    def recursive_find_python_class(folder: str, class_name: str, current_module: str) -> type | None:
        from nnunet_ext.registration import PLANNER_FACTORY, PLANNER_PREFIX, load_target

        if class_name.startswith(PLANNER_PREFIX):
            return load_target(PLANNER_FACTORY)(class_name.removeprefix(PLANNER_PREFIX))
        return original(folder, class_name, current_module)

    setattr(recursive_find_python_class, PATCH_FLAG, True)
    recursive_find_python_class.__wrapped__ = original
    return recursive_find_python_class


def patch_planner_lookup(api: types.ModuleType) -> None:
    """Replace ``recursive_find_python_class`` in nnU-Net's plan-and-preprocess API module (idempotent)."""
    if not getattr(api.recursive_find_python_class, PATCH_FLAG, False):
        api.recursive_find_python_class = _patched_class_lookup(api.recursive_find_python_class)
