"""Install or remove the startup hook file ``nnunet_ext_autoload.pth``.

A regular ``pip install .`` ships the file inside the wheel (``setup.py`` writes it). Editable installs
(``pip install -e .``) do not carry it, so after one run::

    python -m nnunet_ext.install_hook            # writes <site-packages>/nnunet_ext_autoload.pth
    python -m nnunet_ext.install_hook --uninstall

This module is also read by ``setup.py``; it imports nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import os
import sysconfig

PTH_NAME = "nnunet_ext_autoload.pth"
PTH_LINE = (
    'import sys; exec("try:\\n import nnunet_ext._autoload\\nexcept Exception as e:\\n'
    " sys.stderr.write('nnunet_ext autoload failed: %r\\\\n' % (e,))\")\n"
)


def hook_path() -> str:
    """Where the hook file goes: the root of this interpreter's site-packages."""
    return os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_ext.install_hook",
        description="Write (or remove) the startup file that lets nnUNetv2_train/predict find nnunet_ext's "
        "trainers. Needed only after an editable install (pip install -e .).",
    )
    parser.add_argument("--uninstall", action="store_true", help="remove the hook file instead of writing it")
    args = parser.parse_args(argv)
    path = hook_path()
    if args.uninstall:
        if os.path.exists(path):
            os.remove(path)
        print(f"removed {path}")
        return
    with open(path, "w") as handle:
        handle.write(PTH_LINE)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
