"""Startup hook: makes nnU-Net's trainer lookup find registered trainers.

Imported at every interpreter start by the one-line ``nnunet_ext_autoload.pth`` in site-packages. It imports
neither torch nor nnunetv2: it only places a meta-path finder that waits for
``nnunetv2.utilities.find_objects`` to be imported and then patches it (see :mod:`nnunet_ext._patch`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

TARGET_MODULE = "nnunetv2.utilities.find_objects"


class _FindObjectsPatcher(importlib.abc.MetaPathFinder):
    """Meta-path finder that patches ``nnunetv2.utilities.find_objects`` right after it executes."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET_MODULE:
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

        def exec_module(module: types.ModuleType) -> None:
            original_exec_module(module)
            from nnunet_ext._patch import patch_find_objects

            patch_find_objects(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Patch ``find_objects`` now if nnunetv2 already imported it, else install the finder (once)."""
    module = sys.modules.get(TARGET_MODULE)
    if module is not None:
        from nnunet_ext._patch import patch_find_objects

        patch_find_objects(module)
    elif not any(isinstance(finder, _FindObjectsPatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FindObjectsPatcher())


install()
