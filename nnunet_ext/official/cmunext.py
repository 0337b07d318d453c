"""Official CMUNeXt weights (``FengheTan9/CMUNeXt``, ``network/CMUNeXt.py``) on :mod:`nnunet_ext.networks.cmunext`.

One rule serves the three variants: the official module names differ between variants only in the number of
CMUNeXt blocks per stage (``encoderN.block.D``) and the channel widths, both of which the rule reads off our network.

Official name -> ours (``N`` = official stage 1..5, ``D`` = block within the stage, ``K`` = decoder stage 5..2 of the
official ``UpK``/``Up_convK``, ``L`` = the number of stages, 5):

- ``stem.conv.J`` (conv, BN) -> ``encoder.stem.J``
- ``encoderN.block.D.0.fn.J`` (depthwise conv, GELU, BN) -> ``encoder.stages.N-1.3D.fn.J``
- ``encoderN.block.D.J`` for J in 1..6 (PW conv, GELU, BN, PW conv, GELU, BN) ->
  ``encoder.stages.N-1.(3D + 1 + (J-1)//3).((J-1)%3)``
- ``encoderN.up.conv.J`` (3x3 conv block) -> ``encoder.stages.N-1.(3 x depth_N).J``
- ``UpK.up.J`` (upsample, conv, BN, ReLU) -> ``decoder.ups.L-K.J``
- ``Up_convK.conv.J`` (three conv/GELU/BN triples) -> ``decoder.fusions.L-K.(J//3).(J%3)``
- ``Conv_1x1`` -> ``decoder.seg_heads.L-2`` (the final head; our other heads are deep-supervision heads)

The official forward uses every tensor of its state dict, so no official name is declared unused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from nnunet_ext.networks.cmunext import CMUNeXt, cmunext

PUBLISHED_STAGES = 5


def build_official_network(input_channels: int, num_classes: int, variant: str = "cmunext") -> CMUNeXt:
    """Our CMUNeXt ``variant`` in the published configuration: five stages, stride 2, 2D."""
    return cmunext(variant, input_channels, num_classes)


def _stage_index(official_stage: str) -> int:
    return int(official_stage) - 1


def _rules(network: CMUNeXt) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]:
    """(official-name pattern, our name for a match); the patterns capture the parameter/buffer name as ``rest``."""
    stages = network.encoder.stages
    if len(stages) != PUBLISHED_STAGES:
        raise ValueError(f"official CMUNeXt weights need the published {PUBLISHED_STAGES} stages, got {len(stages)}")

    def block_unit(match: re.Match[str]) -> str:
        stage, depth, index = _stage_index(match["stage"]), int(match["depth"]), int(match["index"])
        return f"encoder.stages.{stage}.{3 * depth + 1 + (index - 1) // 3}.{(index - 1) % 3}.{match['rest']}"

    def stage_conv_block(match: re.Match[str]) -> str:
        stage = _stage_index(match["stage"])
        return f"encoder.stages.{stage}.{len(stages[stage]) - 1}.{match['index']}.{match['rest']}"

    def decoder_level(match: re.Match[str]) -> int:
        return PUBLISHED_STAGES - int(match["level"])

    def fusion(match: re.Match[str]) -> str:
        index = int(match["index"])
        return f"decoder.fusions.{decoder_level(match)}.{index // 3}.{index % 3}.{match['rest']}"

    final_head = len(network.decoder.seg_heads) - 1
    rest = r"(?P<rest>[a-z_]+)"
    return [
        (re.compile(rf"stem\.conv\.(?P<index>[01])\.{rest}"), lambda m: f"encoder.stem.{m['index']}.{m['rest']}"),
        (
            re.compile(rf"encoder(?P<stage>[1-5])\.block\.(?P<depth>\d+)\.0\.fn\.(?P<index>[02])\.{rest}"),
            lambda m: f"encoder.stages.{_stage_index(m['stage'])}.{3 * int(m['depth'])}.fn.{m['index']}.{m['rest']}",
        ),
        (re.compile(rf"encoder(?P<stage>[1-5])\.block\.(?P<depth>\d+)\.(?P<index>[1346])\.{rest}"), block_unit),
        (re.compile(rf"encoder(?P<stage>[1-5])\.up\.conv\.(?P<index>[01])\.{rest}"), stage_conv_block),
        (
            re.compile(rf"Up(?P<level>[2-5])\.up\.(?P<index>[12])\.{rest}"),
            lambda m: f"decoder.ups.{decoder_level(m)}.{m['index']}.{m['rest']}",
        ),
        (re.compile(rf"Up_conv(?P<level>[2-5])\.conv\.(?P<index>[023568])\.{rest}"), fusion),
        (re.compile(rf"Conv_1x1\.{rest}"), lambda m: f"decoder.seg_heads.{final_head}.{m['rest']}"),
    ]


def official_key_map(official_keys: Iterable[str], network: nn.Module) -> tuple[dict[str, str], list[str]]:
    """Official state-dict name -> our state-dict name for every official name the rules above cover.

    Names no rule covers are in neither the map nor the unused list (the converter reports them as unknown); the
    official forward uses every tensor, so the unused list is empty. Our names are not checked here: the converter
    checks that each exists in ``network`` and has the official tensor's shape.
    """
    rules = _rules(network)
    mapping = {}
    for key in official_keys:
        for pattern, our_name in rules:
            match = pattern.fullmatch(key)
            if match:
                mapping[key] = our_name(match)
                break
    return mapping, []
