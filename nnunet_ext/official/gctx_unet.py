"""Official GCtx-UNet weights (``Kalrfou/GCtx-UNet`` @ 16489be, ``GCViT_Unet``) onto nnunet_ext's GCtx-UNet.

Every official tensor has the same shape in our network and differs only in its name (the ``model.`` wrapper
prefix and the encoder/decoder split, :data:`nnunet_ext.networks.gctx_unet.OFFICIAL_MODULES`), so the map is
name-only. The official ``relative_position_index`` buffers are used by the forward and mapped as well; our
network computes the same indices.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from nnunet_ext.networks.gctx_unet import GCtxUNet, official_to_network_name


def build_official_network(input_channels: int, num_classes: int) -> nn.Module:
    """The published configuration: 224^2, dim 64, heads 2/4/8/16, windows 7/7/14/7, mlp_ratio 4 (OCT run).

    1-channel input is repeated to 3 channels before a 3-channel embedding, as the official wrapper does.
    """
    return GCtxUNet(
        input_channels,
        num_classes,
        patch_size=(224, 224),
        mlp_ratio=4.0,
        repeat_grayscale=input_channels == 1,
    )


def official_key_map(official_keys: Iterable[str], network: nn.Module) -> tuple[dict[str, str], list[str]]:
    """(official name -> our state-dict name for every official tensor ``network`` has, official names unused).

    Names are those of ``GCViT_Unet.state_dict()`` (``model.`` prefix; also accepted without it).
    """
    own = network.state_dict()
    mapping: dict[str, str] = {}
    unused: list[str] = []
    for key in official_keys:
        target = official_to_network_name(key)
        if target in own:
            mapping[key] = target
        else:
            unused.append(key)
    return mapping, unused
