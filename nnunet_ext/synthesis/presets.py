"""Settings of the latent diffusion model: the ``paper`` preset (Medfusion, as MGCC used it) and a ``tiny`` one.

``paper`` follows Medfusion's scripts (Müller-Franzes et al., arXiv 2212.07501):

- KL-autoencoder: channels 64/128/256/512 (3 downsamplings, f = 8), 8 latent channels, one residual block per level,
  GroupNorm with 8 groups, no attention; loss MSE + LPIPS-VGG + (1 - SSIM) + 1e-6 KL; Adam 1e-4, batch 8;
- latent UNet (epsilon prediction): channels 256/256/512/1024, one residual block per level; L1 loss, AdamW 1e-4,
  batch 32; optional class embedding with whole-batch condition dropout 0.5 (classifier-free guidance);
- scaled-linear beta schedule 0.002 -> 0.02 over T = 1000; DDIM sampling with 150 steps and eta = 1; latents unscaled.

Medfusion trains for up to 1001 epochs; here the length is a number of optimizer steps (independent of dataset
size; 50 000 per stage is about 1000 epochs of a 400-image dataset for the autoencoder). ``tiny`` keeps the
structure at 32x32 pixels with narrow networks, so that both stages train and sample in minutes on a 2-core CPU;
``cpu`` keeps it at 96x96 (12x12 latents) with networks wide enough for a pool of real-looking slices of a small
2D dataset, about 40 minutes of training on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

WEIGHTS_VARIABLE = "nnUNet_ext_vgg16_weights"
"""Environment variable naming the local VGG16 state dict of the LPIPS term (see :mod:`.perceptual`)."""


@dataclass(frozen=True)
class AutoencoderSettings:
    """MONAI ``AutoencoderKL`` and its training; ``len(channels) - 1`` downsamplings by 2."""

    channels: tuple[int, ...] = (64, 128, 256, 512)
    latent_channels: int = 8
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    batch_size: int = 8
    learning_rate: float = 1e-4
    steps: int = 50_000
    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class DiffusionSettings:
    """MONAI ``DiffusionModelUNet`` on the latents, its noise schedule and its training."""

    channels: tuple[int, ...] = (256, 256, 512, 1024)
    num_res_blocks: int = 1
    norm_num_groups: int = 32
    num_head_channels: int = 64
    batch_size: int = 32
    learning_rate: float = 1e-4
    steps: int = 50_000
    num_train_timesteps: int = 1000
    beta_start: float = 0.002
    beta_end: float = 0.02
    condition_dropout: float = 0.5


@dataclass(frozen=True)
class SamplingSettings:
    """DDIM sampling; ``guidance_scale`` 1 is the conditional model alone (Medfusion's bulk sampling)."""

    steps: int = 150
    eta: float = 1.0
    guidance_scale: float = 1.0
    batch_size: int = 32


@dataclass(frozen=True)
class LDMPreset:
    """Everything that defines a synthesis run besides the data: resolution, both networks, sampling."""

    resolution: int = 256
    autoencoder: AutoencoderSettings = field(default_factory=AutoencoderSettings)
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    save_every: int = 5000

    def validate(self) -> None:
        factor = self.autoencoder.downsampling * 2 ** (len(self.diffusion.channels) - 1)
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} must be divisible by {factor} (autoencoder x UNet)")
        for name, value in [
            ("autoencoder steps", self.autoencoder.steps),
            ("diffusion steps", self.diffusion.steps),
            ("sampling steps", self.sampling.steps),
            ("autoencoder batch size", self.autoencoder.batch_size),
            ("diffusion batch size", self.diffusion.batch_size),
            ("sampling batch size", self.sampling.batch_size),
            ("save_every", self.save_every),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.sampling.steps > self.diffusion.num_train_timesteps:
            raise ValueError(f"sampling steps must be at most {self.diffusion.num_train_timesteps}")

    def training_identity(self) -> dict:
        """The settings a checkpoint depends on: all but step counts, checkpoint interval and sampling."""
        identity = asdict(self)
        for stage in ("autoencoder", "diffusion"):
            del identity[stage]["steps"]
        del identity["sampling"], identity["save_every"]
        return identity

    def with_overrides(self, **overrides: int | float | None) -> LDMPreset:
        """A copy with ``{stage}_{field}`` overrides (``autoencoder_steps=...``); None values are ignored."""
        preset = self
        for key, value in overrides.items():
            if value is None:
                continue
            stage, _, name = key.partition("_")
            if stage not in ("autoencoder", "diffusion", "sampling"):
                raise KeyError(f"unknown override {key}")
            preset = replace(preset, **{stage: replace(getattr(preset, stage), **{name: value})})
        return preset


PRESETS: dict[str, LDMPreset] = {
    "paper": LDMPreset(),
    "tiny": LDMPreset(
        resolution=32,
        autoencoder=AutoencoderSettings(
            channels=(16, 32, 32, 32), batch_size=16, learning_rate=1e-3, steps=600, perceptual_weight=1.0
        ),
        diffusion=DiffusionSettings(
            channels=(64, 64), norm_num_groups=16, num_head_channels=64, batch_size=32, learning_rate=5e-4, steps=1000
        ),
        sampling=SamplingSettings(steps=50, batch_size=32),
        save_every=200,
    ),
    "cpu": LDMPreset(
        resolution=96,
        autoencoder=AutoencoderSettings(
            channels=(32, 64, 64, 128), batch_size=8, learning_rate=5e-4, steps=1500, perceptual_weight=1.0
        ),
        diffusion=DiffusionSettings(
            channels=(64, 128), norm_num_groups=32, num_head_channels=64, batch_size=32, learning_rate=5e-4, steps=3000
        ),
        sampling=SamplingSettings(steps=50, batch_size=16),
        save_every=250,
    ),
}
