"""Packaging for nnunet_ext.

Besides the package, the wheel carries ``nnunet_ext_autoload.pth`` at its root (written by ``build_py``
below, as setuptools does for ``distutils-precedence.pth``): the startup hook that lets the literal
``nnUNetv2_train ... -tr <our trainer>`` find our trainers. Trainers are declared as entry points of the
``nnunetv2.trainers`` group, generated from ``nnunet_ext/registration.py``.
"""

import os
import runpy

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
REGISTRATION = runpy.run_path(os.path.join(HERE, "nnunet_ext", "registration.py"))
INSTALL_HOOK = runpy.run_path(os.path.join(HERE, "nnunet_ext", "install_hook.py"))
with open(os.path.join(HERE, "README.md")) as readme:
    README = readme.read()


class BuildPyWithStartupHook(build_py):
    """build_py that also writes the startup hook file into the root of the build tree."""

    def run(self):
        super().run()
        with open(self._hook_target(), "w") as handle:
            handle.write(INSTALL_HOOK["PTH_LINE"])

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), self._hook_target()]

    def _hook_target(self):
        return os.path.join(self.build_lib, INSTALL_HOOK["PTH_NAME"])


COMMANDS = {
    "nnUNetv2_ext_demo": "nnunet_ext.cli.demo:main",
    "nnUNetv2_ext_benchmark": "nnunet_ext.cli.benchmark:main",
    "nnUNetv2_ext_evaluate": "nnunet_ext.cli.evaluate:main",
    "nnUNetv2_ext_compare": "nnunet_ext.cli.compare:main",
    "nnUNetv2_ext_preprocess_unlabeled": "nnunet_ext.cli.preprocess_unlabeled:main",
    "nnUNetv2_ext_ssl_split": "nnunet_ext.cli.ssl_split:main",
    "nnUNetv2_ext_plan": "nnunet_ext.cli.plan:main",
    "nnUNetv2_ext_synthesize": "nnunet_ext.cli.synthesize:main",
    "nnUNetv2_ext_convert_official_weights": "nnunet_ext.cli.convert_official_weights:main",
}

setup(
    name="nnunet_ext",
    version="0.1.0",
    description="Published segmentation networks and semi-supervised schemes as nnU-Net v2 trainers",
    long_description=README,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_ext", "nnunet_ext.*"]),
    install_requires=[
        "nnunetv2==2.8.*",
        "torch>=2.1.2,!=2.9.*",
        "numpy",
        "SimpleITK",
        "tqdm",
        "Pillow",
        # dataset_conversion/Dataset017_Synapse.py reads TransUNet's test_vol_h5 volumes
        "h5py",
        "monai>=1.4",
        "matplotlib",
    ],
    extras_require={
        # dataset_conversion/Dataset084_MNI152Tissue.py reads the ICBM152 template shipped in nilearn's wheel.
        "mni152": ["nilearn"],
        # medpy and surface-distance are the reference implementations the metric tests compare against; nilearn
        # lets the MNI152 converter's tests run on the real template.
        "test": ["pytest>=7", "medpy", "surface-distance", "nilearn"],
        "dev": ["pytest>=7", "medpy", "surface-distance", "nilearn", "ruff"],
    },
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in COMMANDS.items()],
        REGISTRATION["ENTRY_POINT_GROUP"]: REGISTRATION["entry_point_specs"](),
    },
    cmdclass={"build_py": BuildPyWithStartupHook},
)
