"""MONAI's generative networks and schedulers, configured from a preset (:mod:`nnunet_ext.synthesis.presets`).

Deviations from Medfusion's own networks, all inherent to MONAI's blocks:

- ``AutoencoderKL`` has no deep-supervision head at 1/2 resolution (Medfusion adds one with weight 1/2 to the
  reconstruction loss) and downsamples with a separate strided convolution after each level's residual block;
- ``DiffusionModelUNet`` always has one self-attention block in its middle block (Medfusion's UNet has none) and
  ``num_res_blocks + 1`` residual blocks per decoder level;
- classifier-free guidance uses a learned "no class" embedding (index ``num_classes``) where Medfusion adds no
  class embedding at all for the unconditional model.
"""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from nnunet_ext.synthesis.presets import AutoencoderSettings, DiffusionSettings


def build_autoencoder(settings: AutoencoderSettings, channels: int) -> AutoencoderKL:
    """KL-autoencoder ``(B, channels, R, R) <-> (B, latent_channels, R/f, R/f)`` with f = ``settings.downsampling``."""
    return AutoencoderKL(
        spatial_dims=2,
        in_channels=channels,
        out_channels=channels,
        channels=settings.channels,
        latent_channels=settings.latent_channels,
        num_res_blocks=settings.num_res_blocks,
        attention_levels=(False,) * len(settings.channels),
        norm_num_groups=settings.norm_num_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def build_diffusion_unet(settings: DiffusionSettings, latent_channels: int, num_classes: int) -> DiffusionModelUNet:
    """Noise predictor on latents; ``num_classes > 0`` adds a class embedding with one extra "no class" entry."""
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=latent_channels,
        out_channels=latent_channels,
        channels=settings.channels,
        num_res_blocks=settings.num_res_blocks,
        attention_levels=(False,) * len(settings.channels),
        norm_num_groups=settings.norm_num_groups,
        num_head_channels=settings.num_head_channels,
        num_class_embeds=num_classes + 1 if num_classes else None,
    )


class ClassConditionedUNet(nn.Module):
    """A class-conditional ``DiffusionModelUNet`` whose class labels arrive as MONAI inferers' ``context``.

    MONAI's inferers pass conditioning as ``context`` (cross-attention) only; this adapter hands it to the class
    embedding instead, so ``LatentDiffusionInferer`` (training and sampling, including its classifier-free guidance
    with ``cfg_fill_value`` = the "no class" index) drives a class-conditional UNet unchanged.
    """

    def __init__(self, unet: DiffusionModelUNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, h, w)``, ``timesteps`` ``(B,)`` or ``(1,)``, ``context`` class indices ``(B,)``."""
        return self.unet(x, timesteps, class_labels=context.long())


def _schedule(settings: DiffusionSettings) -> dict:
    """Medfusion's schedule: beta_t = linspace(sqrt(0.002), sqrt(0.02), T)**2 (MONAI's scaled_linear_beta)."""
    return {
        "num_train_timesteps": settings.num_train_timesteps,
        "schedule": "scaled_linear_beta",
        "beta_start": settings.beta_start,
        "beta_end": settings.beta_end,
    }


def build_training_scheduler(settings: DiffusionSettings) -> DDPMScheduler:
    """The forward (noising) process used in training."""
    return DDPMScheduler(**_schedule(settings))


class SeededDDIMScheduler(DDIMScheduler):
    """MONAI's DDIM step with a fixed ``eta`` and one random generator per sample of the batch.

    ``step`` draws the stochastic term (eta > 0) of sample ``j`` from ``generators[j]``, so a sample's result
    depends on its own seed only, not on which other samples share its batch or process (sampling shards).
    ``clip_sample`` is off: the predicted x0 is a latent, not an image in [-1, 1] (Medfusion: ``clip_x0=False``).
    Timesteps are MONAI's ``linspace(T - 1, 0, steps)``, as Medfusion's; MONAI's step goes back by ``T // steps``.
    """

    def __init__(self, settings: DiffusionSettings, steps: int, eta: float, generators: list[torch.Generator]):
        super().__init__(clip_sample=False, **_schedule(settings))
        self.set_timesteps(steps)
        self.eta = eta
        self.generators = generators

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Formula (12) of the DDIM paper (Song et al. 2021) per sample, sigma from eta (formula 16)."""
        eta = self.eta if eta is None else eta
        steps = [
            super(SeededDDIMScheduler, self).step(model_output[j : j + 1], timestep, sample[j : j + 1], eta, g)
            for j, g in enumerate(self.generators)
        ]
        return torch.cat([s[0] for s in steps]), torch.cat([s[1] for s in steps])
