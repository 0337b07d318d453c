"""DDIM sampling of synthetic images, one seed per image.

Image ``i`` of a run with seed ``S`` uses its own generator seeded ``derived_seed(S, i)`` for its class (if the
model is class-conditional), its initial latent noise and every stochastic DDIM step (eta = 1). Its result does not
depend on the batch or process that samples it, so sampling can be sharded over processes or GPUs: shard ``k`` of
``K`` samples the indices ``i`` with ``i % K == k``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from monai.inferers import LatentDiffusionInferer
from monai.networks.nets import AutoencoderKL
from torch import nn

from nnunet_ext.synthesis.models import SeededDDIMScheduler
from nnunet_ext.synthesis.presets import DiffusionSettings, SamplingSettings
from nnunet_ext.synthesis.seeds import derived_seed


@dataclass(frozen=True)
class Sampler:
    """A trained LDM ready to sample.

    ``class_frequencies``: training frequency per class of a class-conditional model (None: unconditional);
    ``latent_shape``: ``(latent_channels, R/f, R/f)``.
    """

    autoencoder: AutoencoderKL
    network: nn.Module
    inferer: LatentDiffusionInferer
    diffusion: DiffusionSettings
    sampling: SamplingSettings
    latent_shape: tuple[int, ...]
    class_frequencies: torch.Tensor | None
    device: torch.device

    def sample(self, seed: int, indices: Sequence[int]) -> tuple[torch.Tensor, list[int] | None]:
        """Images ``indices`` of the run with ``seed``: ``(B, C, R, R)`` in [-1, 1] (on CPU) and their classes."""
        generators = [torch.Generator(self.device).manual_seed(derived_seed(seed, i)) for i in indices]
        classes = None
        if self.class_frequencies is not None:
            frequencies = self.class_frequencies.to(self.device)
            classes = [int(torch.multinomial(frequencies, 1, generator=g)) for g in generators]
        noise = torch.stack([torch.randn(self.latent_shape, generator=g, device=self.device) for g in generators])
        scheduler = SeededDDIMScheduler(self.diffusion, self.sampling.steps, self.sampling.eta, generators)
        conditioning = None if classes is None else torch.tensor(classes, device=self.device)
        guided = classes is not None and self.sampling.guidance_scale != 1.0
        with torch.no_grad():
            images = self.inferer.sample(
                input_noise=noise,
                autoencoder_model=self.autoencoder,
                diffusion_model=self.network,
                scheduler=scheduler,
                conditioning=conditioning,
                verbose=False,
                cfg=self.sampling.guidance_scale if guided else None,
                cfg_fill_value=float(len(self.class_frequencies)) if guided else -1.0,
            )
        return images.clamp(-1, 1).float().cpu(), classes


def shard_indices(num_images: int, shard: int, num_shards: int) -> list[int]:
    """The image indices shard ``shard`` of ``num_shards`` samples."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard}")
    return list(range(shard, num_images, num_shards))


def batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield list(indices[start : start + batch_size])
