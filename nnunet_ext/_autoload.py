"""Startup hook: makes nnU-Net's trainer lookup find registered trainers and its planner lookup (``-pl``) find
``ExtPlanner_<trainer>``.

Imported at every interpreter start by the one-line ``nnunet_ext_autoload.pth`` in site-packages, so it must
cost next to nothing: it imports no module at all (``sys`` is built in and already loaded), neither torch nor
nnunetv2 nor ``importlib.abc``. It only places a meta-path finder (a plain class with ``find_spec``, the protocol
``importlib.abc.MetaPathFinder`` describes) that waits for ``nnunetv2.utilities.find_objects`` to be imported and
then patches it (see :mod:`nnunet_ext._patch`, imported only then); likewise
``nnunetv2.experiment_planning.plan_and_preprocess_api``.
"""

import sys

#: module to patch -> name of its patch function in :mod:`nnunet_ext._patch`
TARGET_MODULES = {
    "nnunetv2.utilities.find_objects": "patch_find_objects",
    "nnunetv2.experiment_planning.plan_and_preprocess_api": "patch_planner_lookup",
}


def _apply_patch(module) -> None:
    from nnunet_ext import _patch

    getattr(_patch, TARGET_MODULES[module.__name__])(module)


class _FindObjectsPatcher:
    """Meta-path finder that patches each of :data:`TARGET_MODULES` right after it executes."""

    def find_spec(self, fullname, path=None, target=None):
        """The spec the other finders give a target module, its loader wrapped to patch the module; else None."""
        if fullname not in TARGET_MODULES:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return None
        original_exec_module = spec.loader.exec_module

        def exec_module(module):
            original_exec_module(module)
            _apply_patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Patch the target modules nnunetv2 already imported and install the finder for the others (once)."""
    for name in TARGET_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            _apply_patch(module)
    if not any(isinstance(finder, _FindObjectsPatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FindObjectsPatcher())


install()
