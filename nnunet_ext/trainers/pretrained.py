"""ImageNet initialisation of a trainer's network from a local checkpoint named by an environment variable.

GCGLE-Net (``nnUNet_ext_GCGLE_pretrained``, BiFormer weights) and GCtx-UNet (``nnUNet_ext_gcvit_checkpoint``, GC-ViT
weights) are published with ImageNet-initialised encoders; nothing is downloaded, the user names a file they have.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from nnunet_ext.checkpoints import extract_state_dict, load_weights

#: ``load(network, state_dict) -> (our names loaded, checkpoint names skipped)``
WeightLoader = Callable[[nn.Module, Mapping[str, torch.Tensor]], tuple[list[str], list[str]]]


def initialise_from_environment(
    variable: str, network: nn.Module, load: WeightLoader, log: Callable[[str], object] = print
) -> None:
    """Initialise ``network`` with ``load`` from the checkpoint file named by the environment variable ``variable``;
    nothing happens when it is unset or empty. The file is read as weights from elsewhere
    (:func:`nnunet_ext.checkpoints.load_weights`: tensors only).

    Raises:
        FileNotFoundError: the variable names no file.
        ValueError: the file holds no state dict, or no tensor of it fits the network by name and shape.
    """
    path = os.environ.get(variable, "").strip()
    if not path:
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{variable}={path!r}: no such checkpoint file")
    loaded, skipped = load(network, extract_state_dict(load_weights(path), path))
    if not loaded:
        raise ValueError(f"{variable}={path!r}: no tensor matches {type(network).__name__} by name and shape")
    log(
        f"{type(network).__name__} initialised from {path} ({variable}): {len(loaded)} tensors loaded, "
        f"{len(skipped)} checkpoint tensors skipped (name or shape not in the network)"
    )
