"""Official state dict -> a checkpoint that ``nnUNetv2_train ... -pretrained_weights FILE`` accepts.

nnU-Net's ``load_pretrained_weights`` reads ``checkpoint["network_weights"]`` and requires every key of the trainer's
network, with the same shape, except keys containing ``.seg_layers.`` (its own U-Net's heads). Our networks name
their heads ``decoder.seg_heads.N`` (:mod:`nnunet_ext.networks.common`), which nnU-Net does not skip, so the file
written here holds our network's complete state dict:

- every tensor the official forward uses, moved to our name (shape-checked; a mismatch is an error naming both);
- segmentation heads (``decoder.seg_heads.*``) the official weights cannot fill — deep-supervision heads the official
  network does not have, and every head when ``num_classes`` differs from the official class count — hold our
  network's default initialisation (seeded), exactly what training from scratch starts them with; they are listed
  in the report and in the file, never left out silently;
- any other parameter or buffer without an official tensor is an error.

Official tensors the official forward does not use (declared by the adapter) are reported by name; an official
tensor neither mapped nor declared unused is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnunet_ext.checkpoints import UntrustedCheckpointError, extract_state_dict, load_weights
from nnunet_ext.data.atomic import atomic_file
from nnunet_ext.official import KeyMap, OfficialArchitecture

SEGMENTATION_HEADS = "decoder.seg_heads."
CONVERSION_KEY = "official_conversion"
"""Key of the provenance record in the written checkpoint (nnU-Net reads only ``network_weights``)."""
INITIALISATION_SEED = 0
_LISTED = 10


@dataclass
class Conversion:
    """Result of :func:`convert_state_dict`.

    Attributes:
        state_dict: our network's complete state dict.
        mapped: official name -> our name, for every official tensor copied.
        unused: official names the official forward does not use (not copied).
        initialised: our name -> why it holds our default initialisation instead of an official tensor.
        not_transferred: official head tensors not copied because the class counts differ.
        input_channels, num_classes: the network the state dict is for.
        official_classes: class count of the official segmentation head (None if it has none we map).
    """

    state_dict: dict[str, torch.Tensor]
    mapped: dict[str, str]
    unused: list[str]
    initialised: dict[str, str]
    not_transferred: list[str]
    input_channels: int
    num_classes: int
    official_classes: int | None

    def summary(self) -> str:
        """What was mapped, what was not used and which heads are initialised, in a few lines."""
        lines = [
            f"mapped {len(self.mapped)} official tensors onto {len(self.state_dict)} tensors of our network "
            f"({self.input_channels} input channels, {self.num_classes} classes)"
        ]
        lines.append(f"unused official tensors ({len(self.unused)}): " + (", ".join(self.unused) or "none"))
        if self.not_transferred:
            lines.append(
                f"official head tensors not transferred ({self.official_classes} classes, the network "
                f"{self.num_classes}): {', '.join(self.not_transferred)}"
            )
        heads: dict[str, list[str]] = {}
        for name, reason in self.initialised.items():
            module = name.rsplit(".", 1)[0]
            if module not in heads.setdefault(reason, []):
                heads[reason].append(module)
        lines += [f"our default initialisation for {', '.join(modules)}: {reason}" for reason, modules in heads.items()]
        return "\n".join(lines)


def load_official_state_dict(path: str | os.PathLike, unsafe_load: bool = False) -> dict[str, torch.Tensor]:
    """Read ``path`` (``torch.save`` output) and :func:`~nnunet_ext.checkpoints.extract_state_dict` from it.

    Only tensors and plain containers are unpickled unless ``unsafe_load`` (arbitrary Python objects: trusted files
    only).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no state dict, or holds Python objects and ``unsafe_load`` is off.
    """
    try:
        loaded = load_weights(path, trusted=unsafe_load)
    except UntrustedCheckpointError as error:
        raise ValueError(f"{error}; if you trust the file, load it with --unsafe-load") from error
    return extract_state_dict(loaded, str(path))


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def _check_key_map(key_map: KeyMap, official: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor]) -> None:
    """Every official name mapped or declared unused (not both); every target one of ours, used once."""
    problems = []
    unknown = [name for name in official if name not in key_map.mapping and name not in key_map.unused]
    if unknown:
        problems.append(f"official tensors neither mapped nor known to be unused: {_listing(unknown)}")
    both = [name for name in key_map.unused if name in key_map.mapping]
    if both:
        problems.append(f"official tensors both mapped and declared unused: {_listing(both)}")
    foreign = [name for name in (*key_map.mapping, *key_map.unused, *key_map.transforms) if name not in official]
    if foreign:
        problems.append(f"the key map names tensors the official state dict lacks: {_listing(foreign)}")
    absent = [f"{source} -> {target}" for source, target in key_map.mapping.items() if target not in ours]
    if absent:
        problems.append(f"mapped onto names our network does not have: {_listing(absent)}")
    targets: dict[str, list[str]] = {}
    for source, target in key_map.mapping.items():
        targets.setdefault(target, []).append(source)
    duplicates = [f"{target} <- {', '.join(sources)}" for target, sources in targets.items() if len(sources) > 1]
    if duplicates:
        problems.append(f"several official tensors mapped onto one of ours: {_listing(duplicates)}")
    if problems:
        raise ValueError("; ".join(problems) + " (is --arch the architecture the weights were trained with?)")


def _official_tensor(key_map: KeyMap, official: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    transform = key_map.transforms.get(name)
    return transform(official[name]) if transform is not None else official[name]


def _official_class_count(key_map: KeyMap, official: Mapping[str, torch.Tensor]) -> int | None:
    """Output channels of the official tensors mapped onto our segmentation-head weights (None if there are none).

    Raises:
        ValueError: the official heads disagree on the class count.
    """
    counts = {
        source: _official_tensor(key_map, official, source).shape[0]
        for source, target in key_map.mapping.items()
        if target.startswith(SEGMENTATION_HEADS) and target.endswith(".weight")
    }
    if len(set(counts.values())) > 1:
        raise ValueError(f"the official segmentation heads disagree on the class count: {counts}")
    return next(iter(counts.values()), None)


def _network_and_key_map(
    architecture: OfficialArchitecture, official: Mapping[str, torch.Tensor], input_channels: int, num_classes: int
) -> tuple[nn.Module, KeyMap]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INITIALISATION_SEED)
        network = architecture.build_network(input_channels, num_classes)
    key_map = architecture.key_map(official, network)
    _check_key_map(key_map, official, network.state_dict())
    return network, key_map


def convert_state_dict(
    architecture: OfficialArchitecture,
    official: Mapping[str, torch.Tensor],
    input_channels: int = 3,
    num_classes: int | None = None,
) -> Conversion:
    """Map ``official`` (official names, prefixes already removed) onto our network for ``architecture``.

    Args:
        architecture: the registry entry (:data:`nnunet_ext.official.ARCHITECTURES`).
        official: the official state dict.
        input_channels: input channels of the network the weights were trained for (the official stem's).
        num_classes: output channels of the network to write; None: the official head's class count. When it
            differs from the official head's, the heads hold our default initialisation.

    Raises:
        ValueError: an official tensor is unknown, a shape differs (naming both tensors), or one of our non-head
            tensors gets no official tensor.
    """
    if num_classes is None:
        _, probe = _network_and_key_map(architecture, official, input_channels, 1)
        num_classes = _official_class_count(probe, official)
        if num_classes is None:
            raise ValueError("the official weights map onto no segmentation head: pass --num-classes")
    network, key_map = _network_and_key_map(architecture, official, input_channels, num_classes)
    official_classes = _official_class_count(key_map, official)
    ours = network.state_dict()

    state_dict: dict[str, torch.Tensor] = {}
    mapped: dict[str, str] = {}
    initialised: dict[str, str] = {}
    not_transferred: list[str] = []
    for source, target in key_map.mapping.items():
        tensor = _official_tensor(key_map, official, source)
        if target.startswith(SEGMENTATION_HEADS) and official_classes != num_classes:
            initialised[target] = f"the official head has {official_classes} classes, the network {num_classes}"
            not_transferred.append(source)
            continue
        if tensor.shape != ours[target].shape:
            raise ValueError(
                f"official tensor {source} has shape {tuple(tensor.shape)}, but our {target} needs "
                f"{tuple(ours[target].shape)} (wrong --arch, or weights trained for other --input-channels?)"
            )
        state_dict[target] = tensor.detach().to(dtype=ours[target].dtype).clone()
        mapped[source] = target

    unfilled = [name for name in ours if name not in state_dict and name not in initialised]
    not_heads = [name for name in unfilled if not name.startswith(SEGMENTATION_HEADS)]
    if not_heads:
        raise ValueError(
            f"{len(not_heads)} tensors of our network get no official tensor: {_listing(not_heads)} (is --arch the "
            "architecture the weights were trained with, and is the official state dict complete?)"
        )
    initialised.update({name: "no official counterpart (deep-supervision heads)" for name in unfilled})
    state_dict.update({name: ours[name] for name in initialised})
    ordered = {name: state_dict[name] for name in ours}
    return Conversion(
        ordered,
        mapped,
        list(key_map.unused),
        initialised,
        not_transferred,
        input_channels,
        num_classes,
        official_classes,
    )


def write_pretrained_weights(
    conversion: Conversion, path: str | os.PathLike, provenance: Mapping[str, object], overwrite: bool = False
) -> Path:
    """Write ``{"network_weights": ..., "official_conversion": ...}`` to ``path`` atomically.

    ``official_conversion`` records ``provenance`` (architecture, source file), the mapping, the unused official
    tensors and the initialised heads.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
    record = {
        **provenance,
        "input_channels": conversion.input_channels,
        "num_classes": conversion.num_classes,
        "official_classes": conversion.official_classes,
        "mapped": conversion.mapped,
        "unused": conversion.unused,
        "initialised": conversion.initialised,
        "not_transferred": conversion.not_transferred,
    }
    with atomic_file(path) as temporary:
        torch.save({"network_weights": conversion.state_dict, CONVERSION_KEY: record}, temporary)
    return path
