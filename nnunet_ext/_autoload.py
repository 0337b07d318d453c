"""Startup hook: makes nnU-Net's trainer lookup find registered trainers.

Imported at every interpreter start by the one-line ``nnunet_ext_autoload.pth`` in site-packages, so it must
cost next to nothing: it imports no module at all (``sys`` is built in and already loaded), neither torch nor
nnunetv2 nor ``importlib.abc``. It only places a meta-path finder (a plain class with ``find_spec``, the protocol
``importlib.abc.MetaPathFinder`` describes) that waits for ``nnunetv2.utilities.find_objects`` to be imported and
then patches it (see :mod:`nnunet_ext._patch`, imported only then).
"""

import sys

TARGET_MODULE = "nnunetv2.utilities.find_objects"


class _FindObjectsPatcher:
    """Meta-path finder that patches ``nnunetv2.utilities.find_objects`` right after it executes."""

    def find_spec(self, fullname, path=None, target=None):
        """The spec the other finders give ``TARGET_MODULE``, its loader wrapped to patch the module; else None."""
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

        def exec_module(module):
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
