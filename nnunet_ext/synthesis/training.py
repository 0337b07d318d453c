"""The two training stages (autoencoder, then latent diffusion) with checkpoints and resumption.

A stage is a network (initialised from a fixed seed), its optimizer and a loss that draws its own batch. Every
step first seeds torch's global generators from ``(training seed, stage, step)``, so batches, noise and timesteps
of step ``k`` are the same whether or not the run was interrupted before it. A checkpoint (network, optimizer,
step) is written atomically every ``save_every`` steps and at the end of the stage; a resumed stage continues from
its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.inferers import LatentDiffusionInferer
from monai.losses import SSIMLoss
from monai.networks.nets import AutoencoderKL
from torch import nn
from tqdm import tqdm

from nnunet_ext.checkpoints import load_weights
from nnunet_ext.data.atomic import atomic_file
from nnunet_ext.synthesis.perceptual import LPIPSVGG
from nnunet_ext.synthesis.presets import AutoencoderSettings, DiffusionSettings
from nnunet_ext.synthesis.seeds import STAGE_KEYS, derived_seed

LossFunction = Callable[[], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Stage:
    """One training stage: ``loss()`` draws a batch and returns the loss and its parts (for the progress bar)."""

    name: str
    network: nn.Module
    optimizer: torch.optim.Optimizer
    loss: LossFunction
    steps: int


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_file(path) as temporary:
        torch.save(payload, temporary)


def load_checkpoint(path: Path) -> dict:
    return load_weights(path)


def completed_steps(path: Path) -> int:
    """Steps a stage's checkpoint has completed (0 without a checkpoint)."""
    return load_checkpoint(path)["step"] if path.is_file() else 0


def run_stage(stage: Stage, checkpoint: Path, save_every: int, training_seed: int) -> dict[str, float]:
    """Train ``stage`` up to ``stage.steps`` steps, continuing from ``checkpoint`` when it exists.

    Returns the loss parts of the last step (empty when the checkpoint had already completed the stage).
    """
    start = 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        stage.network.load_state_dict(state["network"])
        stage.optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    stage.network.train()
    parts: dict[str, float] = {}
    progress = tqdm(
        range(start, stage.steps), desc=f"training {stage.name}", unit="step", initial=start, total=stage.steps
    )
    for step in progress:
        torch.manual_seed(derived_seed(training_seed, STAGE_KEYS[stage.name], step))
        loss, parts = stage.loss()
        stage.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stage.optimizer.step()
        progress.set_postfix({k: f"{v:.4f}" for k, v in parts.items()}, refresh=False)
        done = step + 1
        if done % save_every == 0 or done == stage.steps:
            save_checkpoint(
                checkpoint,
                {"step": done, "network": stage.network.state_dict(), "optimizer": stage.optimizer.state_dict()},
            )
    stage.network.eval()
    return parts


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch (Medfusion's ``kl``)."""
    per_element = z_mu.square() + z_sigma.square() - torch.log(z_sigma.square().clamp_min(1e-30)) - 1
    return 0.5 * per_element.sum() / z_mu.shape[0]


def autoencoder_loss(
    autoencoder: AutoencoderKL,
    images: torch.Tensor,
    settings: AutoencoderSettings,
    ssim: SSIMLoss,
    perceptual: LPIPSVGG | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Medfusion's VAE loss on ``images`` ``(B, C, R, R)`` in [-1, 1].

    ``MSE + (1 - SSIM) + w_p LPIPS`` averaged over pixels and batch, plus ``w_kl KL`` (sum over latent, mean over
    batch). SSIM is computed on [0, 1] with the reconstruction clamped to it, as Medfusion's ``ssim_loss``.
    """
    reconstruction, z_mu, z_sigma = autoencoder(images)
    pixel = F.mse_loss(reconstruction, images)
    structure = ssim(((reconstruction + 1) / 2).clamp(0, 1), (images + 1) / 2)
    kl = kl_divergence(z_mu, z_sigma)
    loss = pixel + structure + settings.kl_weight * kl
    parts = {"mse": pixel.item(), "1-ssim": structure.item(), "kl": kl.item()}
    if perceptual is not None:
        lpips = perceptual(reconstruction, images).mean()
        loss = loss + settings.perceptual_weight * lpips
        parts["lpips"] = lpips.item()
    return loss, parts


def diffusion_loss(
    inferer: LatentDiffusionInferer,
    autoencoder: AutoencoderKL,
    network: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    latent_shape: tuple[int, ...],
    settings: DiffusionSettings,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 between the true and predicted noise (epsilon objective, Medfusion's pipeline loss).

    ``latent_shape``: ``(latent_channels, R/f, R/f)``; the inferer encodes ``images`` (a posterior sample, scaled by
    its ``scale_factor``) and noises the latent at random timesteps.

    ``labels`` ``(B,)`` class indices, or None (unconditional). With probability ``condition_dropout`` the whole
    batch's labels are replaced by the "no class" index ``num_classes`` (Medfusion drops the condition per batch).
    """
    noise = torch.randn((images.shape[0], *latent_shape), device=images.device)
    timesteps = torch.randint(0, settings.num_train_timesteps, (images.shape[0],), device=images.device)
    condition = None
    if labels is not None:
        null_class = network.unet.num_class_embeds - 1
        dropped = torch.rand(()) < settings.condition_dropout
        condition = torch.full_like(labels, null_class) if dropped else labels
    prediction = inferer(images, autoencoder, network, noise, timesteps, condition=condition)
    loss = F.l1_loss(prediction, noise)
    return loss, {"l1": loss.item()}
