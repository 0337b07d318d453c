"""Reading checkpoint files: every ``torch.load`` of nnunet_ext goes through here, under one policy.

- Training checkpoints (written by nnU-Net or our trainers: ``checkpoint_final.pth`` and friends) hold Python
  objects besides tensors (the plans, the logger's lists, numpy numbers). They are the user's own files and are read
  as nnU-Net reads them: :func:`load_training_checkpoint`.
- Weights from elsewhere (official releases, ImageNet checkpoints, VGG16 weights, the LDM's own files) are read with
  ``weights_only=True``: tensors and plain containers only, no arbitrary code runs on unpickling
  (:func:`load_weights`). A file holding other Python objects is refused with a message naming it, unless the caller
  was told that the file is trusted (``nnUNetv2_ext_convert_official_weights --unsafe-load``).

:func:`extract_state_dict` finds the state dict inside whatever such a file holds, and :func:`load_matching` copies
the tensors that fit a module by name and shape (ImageNet initialisation).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "network_weights", "net", "network", "weights")
"""Keys under which training scripts store the state dict in a checkpoint dict, tried in this order."""
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Name prefixes that DataParallel/DistributedDataParallel and torch.compile add; removed by extract_state_dict."""
_LISTED = 10


class UntrustedCheckpointError(ValueError):
    """A weights file holds Python objects besides tensors and was not declared trusted."""


def load_weights(path: str | os.PathLike, trusted: bool = False) -> object:
    """``torch.load`` of a weights file from elsewhere, onto the CPU.

    Args:
        trusted: unpickle arbitrary Python objects (only for files whose origin the user vouches for).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UntrustedCheckpointError: the file holds Python objects besides tensors and ``trusted`` is off.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        raise UntrustedCheckpointError(
            f"{path} holds Python objects besides tensors, which are not loaded from files of unknown origin "
            f"({str(error).splitlines()[0]})"
        ) from error


def load_training_checkpoint(path_or_checkpoint: str | os.PathLike | Mapping) -> dict:
    """A training checkpoint of nnU-Net or our trainers, read once onto the CPU; an already loaded checkpoint dict
    is returned as it is."""
    if isinstance(path_or_checkpoint, Mapping):
        return dict(path_or_checkpoint)
    return torch.load(path_or_checkpoint, map_location="cpu", weights_only=False)


def _is_state_dict(candidate: object) -> bool:
    return (
        isinstance(candidate, Mapping)
        and len(candidate) > 0
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in candidate.items())
    )


def _strip_wrapper_prefixes(name: str) -> str:
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def extract_state_dict(loaded: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict in ``loaded``: a plain state dict, a module, or a checkpoint dict holding one.

    Checkpoint dicts are searched under :data:`CHECKPOINT_KEYS`; :data:`WRAPPER_PREFIXES` are removed from names.

    Raises:
        ValueError: no state dict found, or two names coincide once the prefixes are removed.
    """
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if not _is_state_dict(loaded):
        inner = [key for key in CHECKPOINT_KEYS if isinstance(loaded, Mapping) and _is_state_dict(loaded.get(key))]
        if not inner:
            found = sorted(map(str, loaded))[:_LISTED] if isinstance(loaded, Mapping) else type(loaded).__name__
            raise ValueError(
                f"{source}: no state dict found: expected a dict of tensors or a checkpoint dict holding one under "
                f"one of {', '.join(CHECKPOINT_KEYS)}; found: {found}"
            )
        loaded = loaded[inner[0]]
    state_dict: dict[str, torch.Tensor] = {}
    for name, tensor in loaded.items():
        stripped = _strip_wrapper_prefixes(name)
        if stripped in state_dict:
            raise ValueError(f"{source}: two tensors are named {stripped!r} once the prefixes {WRAPPER_PREFIXES} go")
        state_dict[stripped] = tensor
    return state_dict


def load_matching(module: nn.Module, candidates: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy into ``module`` every tensor of ``candidates`` (named as in ``module.state_dict()``) whose name exists in
    the module with the same shape (non-strict, as the published ``load_from`` functions); returns the names
    copied, sorted."""
    own = module.state_dict()
    matching = {name: tensor for name, tensor in candidates.items() if name in own and own[name].shape == tensor.shape}
    module.load_state_dict(matching, strict=False)
    return sorted(matching)
