"""The optional perceptual term of the autoencoder loss: Medfusion's ``lpips.LPIPS(net="vgg", lpips=False)``.

That is the LPIPS distance (Zhang et al., CVPR 2018, eq. 1) on VGG16 features without the learned linear
calibration: for the ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, unit-normalise the features of
both images along channels, take the squared difference summed over channels, average over space, and sum over
the five layers.

The VGG16 weights are never downloaded (MONAI's ``PerceptualLoss`` and the ``lpips`` package fetch them at run
time): they are read from a local file in torchvision's ``vgg16`` state-dict layout (``features.N.weight``, e.g.
torchvision's ``vgg16-397923af.pth``), given by ``--perceptual-weights`` or ``$nnUNet_ext_vgg16_weights``.
Without a file the term is off and a notice is logged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from nnunet_ext.checkpoints import extract_state_dict, load_weights
from nnunet_ext.synthesis.presets import WEIGHTS_VARIABLE

logger = logging.getLogger(__name__)

#: VGG16 configuration "D": output channels of the convolutions, "M" = 2x2 max pooling
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: indices (in ``features``) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_TAPS = (3, 8, 15, 22, 29)
#: LPIPS' input scaling of [-1, 1] images to ImageNet statistics
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` up to relu5_3, module indices identical (state dicts load as they are)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for layer in VGG16_LAYERS:
        if layer == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers += [nn.Conv2d(in_channels, layer, 3, padding=1), nn.ReLU(inplace=False)]
        in_channels = layer
    return nn.Sequential(*layers)


class LPIPSVGG(nn.Module):
    """LPIPS distance without linear calibration; frozen. ``forward(a, b)`` on ``(B, C, H, W)`` in [-1, 1] -> ``(B,)``.

    Images with 3 channels are taken as RGB; other channel counts are compared channel by channel (each channel
    repeated to RGB, as Medfusion's grayscale inputs are) and the distances averaged.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        self.features = vgg16_features()
        own = {k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")}
        self.features.load_state_dict(own)
        self.features.requires_grad_(False).eval()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).reshape(1, 3, 1, 1))

    def train(self, mode: bool = True) -> LPIPSVGG:
        """Stays in eval mode (a fixed feature extractor)."""
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, h = [], (x - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in LPIPS_TAPS:
                taps.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return taps

    def _rgb_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sum((fa - fb).square().sum(dim=1).mean(dim=(1, 2)) for fa, fb in zip(self._taps(a), self._taps(b)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 3:
            return self._rgb_distance(a, b)
        per_channel = [
            self._rgb_distance(a[:, c : c + 1].expand(-1, 3, -1, -1), b[:, c : c + 1].expand(-1, 3, -1, -1))
            for c in range(a.shape[1])
        ]
        return torch.stack(per_channel).mean(dim=0)


def load_perceptual_loss(weights: str | os.PathLike | None) -> LPIPSVGG | None:
    """The LPIPS-VGG term from ``weights`` (or ``$nnUNet_ext_vgg16_weights``); None (term off, logged) without.

    Raises:
        FileNotFoundError: a weights file is named but does not exist.
        ValueError: the file does not hold VGG16 ``features`` weights.
    """
    weights = weights or os.environ.get(WEIGHTS_VARIABLE)
    if not weights:
        logger.warning(
            "perceptual (LPIPS-VGG) loss off: no local VGG16 weights given (--perceptual-weights or "
            f"${WEIGHTS_VARIABLE}); nothing is downloaded. The autoencoder trains on MSE + SSIM + KL."
        )
        return None
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights file {path} does not exist")
    state_dict = extract_state_dict(load_weights(path), str(path))
    try:
        return LPIPSVGG(state_dict)
    except RuntimeError as error:
        raise ValueError(f"{path}: not a torchvision vgg16 state dict ({error})") from error
