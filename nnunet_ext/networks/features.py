"""Expose the last decoder feature map of any segmentation network, and optionally average two networks.

:class:`FeatureNetwork` wraps a network built by a trainer's ``build_network_architecture`` and adds
``forward(x, return_features=True) -> (logits, features)``, the features being the input of the final segmentation
head (full resolution), which the GuidedNet scheme (:mod:`nnunet_ext.ssl.cgmm`) needs:

- nnunet_ext networks (:class:`~nnunet_ext.networks.common.SegmentationDecoder`) return it themselves
  (``decoder(skips, return_features=True)``);
- nnU-Net's own U-Nets (``dynamic_network_architectures`` ``UNetDecoder``: ``PlainConvUNet``, ``ResidualEncoderUNet``)
  have no such switch; their final head is ``decoder.seg_layers[-1]`` and a forward pre-hook on it, registered for
  the duration of the call only, captures its input. Nothing of nnU-Net's decoder is re-implemented.

The wrapper holds the wrapped network's ``encoder`` and ``decoder`` under the same names, so its state dict is
exactly the wrapped network's (checkpoints load into either), ``trainer.set_deep_supervision_enabled`` works
unchanged, and ``network.deep_supervision_scales`` is kept when the wrapped network has it.

Averaging two networks at inference: a state dict holding a second network's weights under ``partner.`` (written by
the GuidedNet trainer as ``checkpoint_final_average.pth``) makes :meth:`FeatureNetwork.load_state_dict` create that
partner; ``forward`` then returns ``log(mean(softmax_1, softmax_2))``, logits whose softmax is the mean of the two
networks' probabilities (what nnU-Net's predictor then softmaxes/argmaxes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from nnunet_ext.networks.common import SegmentationDecoder

#: state-dict prefix of the second network in an averaged export
PARTNER_PREFIX = "partner."


class FeatureNetwork(nn.Module):
    """``network`` (encoder/decoder contract) with ``forward(x, return_features)``; see the module docstring.

    ``forward(x)``: logits (B, K, *S) or, with deep supervision on, a list of them, highest resolution first.
    ``forward(x, return_features=True)``: ``(logits, features)`` with features (B, C, *S') the input of the final
    head.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        if not (hasattr(network, "encoder") and hasattr(network, "decoder")):
            raise TypeError(
                f"{type(network).__name__} has no encoder/decoder: not a segmentation network of nnU-Net's form"
            )
        if not isinstance(network.decoder, SegmentationDecoder) and not hasattr(network.decoder, "seg_layers"):
            raise TypeError(
                f"{type(network.decoder).__name__} neither supports decoder(skips, return_features=True) "
                "(nnunet_ext.networks.common.SegmentationDecoder) nor has nnU-Net's seg_layers: its last decoder "
                "feature cannot be read"
            )
        self.encoder = network.encoder
        self.decoder = network.decoder
        self.network_name = type(network).__name__
        if hasattr(network, "deep_supervision_scales"):
            self.deep_supervision_scales = network.deep_supervision_scales
        self.partner: FeatureNetwork | None = None

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if return_features:
            return self._forward_with_features(x)
        logits = self.decoder(self.encoder(x))
        if self.partner is None:
            return logits
        return _average_probabilities(logits, self.partner(x))

    def _forward_with_features(self, x: torch.Tensor):
        skips = self.encoder(x)
        if isinstance(self.decoder, SegmentationDecoder):
            return self.decoder(skips, return_features=True)
        captured: list[torch.Tensor] = []
        handle = self.decoder.seg_layers[-1].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            logits = self.decoder(skips)
        finally:
            handle.remove()
        return logits, captured[-1]

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Also loads an averaged export: ``partner.*`` keys create (or keep) the partner network; without them
        any partner is dropped."""
        has_partner = any(key.startswith(PARTNER_PREFIX) for key in state_dict)
        if has_partner and self.partner is None:
            partner = copy.deepcopy(self)
            partner.partner = None
            self.partner = partner
        elif not has_partner:
            self.partner = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _average_probabilities(logits1, logits2):
    """``log((softmax(a) + softmax(b)) / 2)`` per tensor (or per deep-supervision level)."""
    if isinstance(logits1, (list, tuple)):
        return [_average_probabilities(a, b) for a, b in zip(logits1, logits2)]
    mean = (torch.softmax(logits1.float(), 1) + torch.softmax(logits2.float(), 1)) / 2
    return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))
