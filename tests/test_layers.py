"""The package's structure: every module imports only from its own layer or the layers below it, and checkpoint
files are read in one module."""

from __future__ import annotations

import ast
from pathlib import Path

import nnunet_ext

PACKAGE = Path(nnunet_ext.__file__).parent

#: bottom to top; a top-level module or sub-package of nnunet_ext belongs to exactly one layer
LAYERS: list[set[str]] = [
    {
        "__init__",
        "_autoload",
        "_patch",
        "install_hook",
        "registration",
        "checkpoints",
        "command_line",
        "data",
        "timing",
    },
    {"networks"},
    {"ssl", "conversion", "evaluation", "official"},
    {"trainers", "synthesis"},
    {"benchmark"},
    {"planning"},
    {"cli"},
]


def layer_of(name: str) -> int:
    return next(index for index, members in enumerate(LAYERS) if name in members)


def imported_parts(tree: ast.AST) -> set[str]:
    """The top-level parts of nnunet_ext that a module imports, anywhere in it (function-level imports included)."""
    modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    return {module.split(".")[1] for module in modules if module.startswith("nnunet_ext.")}


def test_every_part_of_the_package_has_a_layer():
    parts = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir() if path.name != "__pycache__"}
    assert parts == set().union(*LAYERS)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for imported in imported_parts(ast.parse(path.read_text())):
            if layer_of(imported) > layer_of(part):
                upward.append(f"{path.relative_to(PACKAGE)} imports nnunet_ext.{imported}")
    assert upward == []


def test_checkpoint_files_are_read_in_one_module_only():
    readers = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if "torch.load(" in path.read_text()}
    assert readers == {"checkpoints.py"}
