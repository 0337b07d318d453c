"""Weights trained with the authors' code (released checkpoints, own runs of the official repositories) on our networks.

Every architecture has an adapter module in this package with two functions:

- ``build_official_network(input_channels: int, num_classes: int, **build_kwargs) -> nn.Module``: our network in
  the published configuration;
- ``official_key_map(official_keys: Iterable[str], network: nn.Module)`` returning ``(mapping, unused)`` or
  ``(mapping, unused, transforms)``: official name -> our state-dict name for every tensor the official forward
  uses, the official names it does not use, and optionally official name -> ``callable(tensor) -> tensor`` for
  tensors stored in another layout.

:data:`ARCHITECTURES` names them for ``nnUNetv2_ext_convert_official_weights --arch``. Adapter modules are imported
only when their architecture is converted, so one whose module is not part of this installation fails alone, with
a message naming the module. The conversion itself is :mod:`nnunet_ext.official.convert`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the --arch table is read without importing torch (fast --help)
    import torch
    from torch import nn

TensorTransform = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class KeyMap:
    """What an adapter's ``official_key_map`` returns, with the optional transforms made explicit."""

    mapping: dict[str, str]
    unused: list[str]
    transforms: dict[str, TensorTransform] = field(default_factory=dict)


@dataclass(frozen=True)
class OfficialArchitecture:
    """One ``--arch`` choice: the adapter module, the keyword arguments its builder gets, and where it comes from.

    Attributes:
        module: dotted name of the adapter module.
        trainer: the nnU-Net trainer whose network the converted weights fit.
        source: the official repository the weights come from.
        build_kwargs: extra keyword arguments of the module's ``build_official_network`` (e.g. the variant).
    """

    module: str
    trainer: str
    source: str
    build_kwargs: Mapping[str, object] = field(default_factory=dict)

    def adapter(self) -> ModuleType:
        """The adapter module, imported now.

        Raises:
            RuntimeError: the module is not part of this installation (an import error inside it propagates).
        """
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as error:
            if error.name != self.module:
                raise
            raise RuntimeError(
                f"the official-weights adapter {self.module} is not part of this installation of nnunet_ext"
            ) from error

    def build_network(self, input_channels: int, num_classes: int) -> nn.Module:
        """Our network in the published configuration for ``input_channels`` and ``num_classes``."""
        return self.adapter().build_official_network(input_channels, num_classes, **self.build_kwargs)

    def key_map(self, official_keys: Iterable[str], network: nn.Module) -> KeyMap:
        """The adapter's map of ``official_keys`` onto ``network``'s state-dict names."""
        result = self.adapter().official_key_map(list(official_keys), network)
        if len(result) not in (2, 3):
            raise ValueError(f"{self.module}.official_key_map must return 2 or 3 values, got {len(result)}")
        return KeyMap(dict(result[0]), list(result[1]), dict(result[2]) if len(result) == 3 else {})


def _cmunext(variant: str, trainer: str) -> OfficialArchitecture:
    return OfficialArchitecture(
        "nnunet_ext.official.cmunext", trainer, "github.com/FengheTan9/CMUNeXt", MappingProxyType({"variant": variant})
    )


ARCHITECTURES: Mapping[str, OfficialArchitecture] = MappingProxyType(
    {
        "cmunext": _cmunext("cmunext", "nnUNetTrainerCMUNeXt"),
        "cmunext_s": _cmunext("cmunext_s", "nnUNetTrainerCMUNeXt_S"),
        "cmunext_l": _cmunext("cmunext_l", "nnUNetTrainerCMUNeXt_L"),
        "gctx_unet": OfficialArchitecture(
            "nnunet_ext.official.gctx_unet", "nnUNetTrainerGCTxUNet", "github.com/Kalrfou/GCtx-UNet"
        ),
        "gcgle": OfficialArchitecture(
            "nnunet_ext.official.gcgle", "nnUNetTrainerGCGLE", "github.com/minshiquan/GCGLE_Net"
        ),
    }
)


def official_architecture(name: str) -> OfficialArchitecture:
    """The registered architecture ``name``.

    Raises:
        ValueError: ``name`` is not registered.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
