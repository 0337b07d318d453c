"""nnunet_ext: published segmentation networks and semi-supervised schemes as nnU-Net v2 trainers.

Importing the package (the startup hook does so at every interpreter start) lets nnU-Net's trainer lookup
find the registered trainers; see :mod:`nnunet_ext._autoload`.
"""

from nnunet_ext import _autoload  # noqa: F401  (installs the lookup patch on import)

__version__ = "0.1.0"
