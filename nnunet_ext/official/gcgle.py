"""Import of official GCGLE-Net weights (``minshiquan/GCGLE_Net``, 224, n_win 7, 4-level decoder "R4").

:func:`build_official_network` is the published configuration of :class:`~nnunet_ext.networks.gcgle.GCGLENet`;
:func:`official_key_map` translates official state-dict names into its names. Every tensor the official forward
uses has the same shape in our network, so the map is name-only, with one exception: the official wrapper
repeats a 1-channel image to 3 channels, so for a 1-channel network the 3-channel stem kernel is summed over its
input-channel axis (an exactly equivalent convolution), returned as a third element (official name -> transform).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

from nnunet_ext.networks.gcgle import GCGLEConfig, GCGLENet

OFFICIAL_PREFIX = "bra_unet."
STEM_WEIGHT = "downsample_layers.0.0.weight"
#: official names the official forward never reads: the built-but-unused 768-d stage and second output conv
UNUSED_PATTERN = re.compile(r"^(stages\.3\.|output_conv1\.)")

_BLOCK_RULES = [
    (re.compile(r"\.mlp\.conv1\.6\.conv1\."), ".leb.conv.6.conv."),
    (re.compile(r"\.mlp\.conv1\."), ".leb.conv."),
]


def build_official_network(input_channels: int, num_classes: int) -> nn.Module:
    """The published GCGLE-Net (R4 decoder, no bottleneck blocks, no deep supervision) in nnunet_ext's form."""
    return GCGLENet(input_channels, num_classes, GCGLEConfig(), deep_supervision=False)


def _translate(name: str, final_head: int) -> str:
    """Our state-dict name of official tensor ``name`` (without the ``bra_unet.`` prefix)."""
    for pattern, replacement in _BLOCK_RULES:
        name = pattern.sub(replacement, name)
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"^(downsample_layers|stages)\.", lambda m: f"encoder.{m.group(1)}."),
        (r"^layers_up\.0\.", lambda m: "decoder.up0."),
        (r"^layers_up\.(\d)\.", lambda m: f"decoder.levels.{int(m.group(1)) - 1}."),
        (r"^csam(\d)\.", lambda m: f"decoder.levels.{3 - int(m.group(1))}.csam."),
        (r"^concat_back_dim\.(\d)\.", lambda m: f"decoder.levels.{int(m.group(1)) - 1}.reduce."),
        (r"^(norm_up|up4)\.", lambda m: f"decoder.{m.group(1)}."),
        (r"^output\.", lambda m: f"decoder.seg_heads.{final_head}."),
    ]
    for pattern, replacement in rules:
        translated, count = re.subn(pattern, replacement, name)
        if count:
            return translated
    raise KeyError(f"official GCGLE-Net tensor {name!r} has no counterpart in nnunet_ext's network")


def _sum_input_channels(weight: torch.Tensor) -> torch.Tensor:
    """3-channel stem kernel -> 1-channel kernel equal to it on a repeated grey image."""
    return weight.sum(dim=1, keepdim=True)


def official_key_map(
    official_keys: Iterable[str], network: nn.Module
) -> (
    tuple[dict[str, str], list[str]]
    | tuple[dict[str, str], list[str], dict[str, Callable[[torch.Tensor], torch.Tensor]]]
):
    """Map official GCGLE-Net state-dict names to ``network``'s (built by :func:`build_official_network`).

    Returns ``(mapping, unused)``: official name -> our state-dict name for every tensor (parameters and
    BatchNorm buffers) the official forward uses, and the official names it does not use (``stages.3.*``,
    ``output_conv1.*``). For a 1-channel network a third element maps the stem kernel to its transform (see the
    module docstring). Raises KeyError if a used tensor has no counterpart in ``network`` (not the published
    configuration) and ValueError for input channels the official wrapper does not accept (1 or 3).
    """
    input_channels = network.encoder.downsample_layers[0][0].in_channels
    if input_channels not in (1, 3):
        raise ValueError(f"official GCGLE-Net weights take 1 or 3 input channels, the network has {input_channels}")
    own = network.state_dict()
    final_head = len(network.decoder.seg_heads) - 1
    mapping: dict[str, str] = {}
    unused: list[str] = []
    for official in official_keys:
        name = official.removeprefix(OFFICIAL_PREFIX)
        if UNUSED_PATTERN.match(name):
            unused.append(official)
            continue
        ours = _translate(name, final_head)
        if ours not in own:
            raise KeyError(f"official tensor {official!r} maps to {ours!r}, which the network does not have")
        mapping[official] = ours
    if input_channels == 3:
        return mapping, unused
    transforms = {official: _sum_input_channels for official in mapping if official.endswith(STEM_WEIGHT)}
    return mapping, unused, transforms
