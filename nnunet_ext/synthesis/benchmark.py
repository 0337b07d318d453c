"""Speed and memory of the LDM of a preset: per training iteration of each stage and per sampled image.

``python -m nnunet_ext.synthesis.benchmark --preset paper --device cuda`` prints a table (and ``-o`` writes JSON):

- ``autoencoder``: one training iteration (forward, MSE + SSIM + KL loss, backward, Adam step) on a batch of the
  preset's size; with ``--with-perceptual`` the LPIPS-VGG term is included (random VGG16 weights: same cost);
- ``diffusion``: one training iteration of the latent UNet (encoding, noising, L1 loss, backward, AdamW step);
- ``sampling``: one batch of DDIM sampling with the preset's steps (eta 1, per-image generators) and decoding;
  reported per image and per DDIM step per image.

Times are medians over ``--repeats`` after ``--warmup`` runs, on random images in [-1, 1]. Each phase runs in a
fresh process; peak memory is the phase's peak above what the process held before building the networks (CUDA:
allocated memory; CPU: resident set size).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
from pathlib import Path

import torch
from monai.inferers import LatentDiffusionInferer
from monai.losses import SSIMLoss
from tqdm import tqdm

from nnunet_ext.synthesis.models import build_autoencoder, build_diffusion_unet, build_training_scheduler
from nnunet_ext.synthesis.perceptual import LPIPSVGG, vgg16_features
from nnunet_ext.synthesis.presets import PRESETS, LDMPreset
from nnunet_ext.synthesis.sampling import Sampler
from nnunet_ext.synthesis.training import autoencoder_loss, diffusion_loss
from nnunet_ext.timing import median_milliseconds, memory_in_use, peak_memory_mb

PHASES = ("autoencoder", "diffusion", "sampling")


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure_phase(
    phase: str, preset: LDMPreset, channels: int, device_name: str, perceptual: bool, warmup: int, repeats: int
) -> dict:
    """Time and peak memory of one phase (meant to run in a fresh process)."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    baseline = memory_in_use(device)
    resolution, factor = preset.resolution, preset.autoencoder.downsampling
    latent_shape = (preset.autoencoder.latent_channels, resolution // factor, resolution // factor)
    autoencoder = build_autoencoder(preset.autoencoder, channels).to(device)
    unet = build_diffusion_unet(preset.diffusion, preset.autoencoder.latent_channels, 0).to(device)
    inferer = LatentDiffusionInferer(build_training_scheduler(preset.diffusion))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def images(size: int) -> torch.Tensor:
        return torch.rand(size, channels, resolution, resolution, device=device) * 2 - 1

    if phase == "autoencoder":
        batch, network = preset.autoencoder.batch_size, autoencoder
        ssim = SSIMLoss(spatial_dims=2, data_range=1.0)
        vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
        lpips = LPIPSVGG(vgg).to(device) if perceptual else None
        optimizer = torch.optim.Adam(autoencoder.parameters(), lr=preset.autoencoder.learning_rate)
        data = images(batch)

        def loss() -> torch.Tensor:
            return autoencoder_loss(autoencoder, data, preset.autoencoder, ssim, lpips)[0]
    elif phase == "diffusion":
        batch, network = preset.diffusion.batch_size, unet
        autoencoder.requires_grad_(False).eval()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=preset.diffusion.learning_rate)
        data = images(batch)

        def loss() -> torch.Tensor:
            return diffusion_loss(inferer, autoencoder, unet, data, None, latent_shape, preset.diffusion)[0]
    else:
        batch, network = preset.sampling.batch_size, unet
        autoencoder.eval()
        unet.eval()
        sampler = Sampler(autoencoder, unet, inferer, preset.diffusion, preset.sampling, latent_shape, None, device)
        milliseconds = median_milliseconds(lambda: sampler.sample(0, range(batch)), device, warmup, repeats)
        return {
            "phase": phase,
            "batch": batch,
            "params": _parameters(autoencoder) + _parameters(unet),
            "ms_per_image": milliseconds / batch,
            "ms_per_step_per_image": milliseconds / batch / preset.sampling.steps,
            "sampling_steps": preset.sampling.steps,
            "peak_memory_mb": peak_memory_mb(device, baseline),
        }

    def iteration() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    milliseconds = median_milliseconds(iteration, device, warmup, repeats)
    return {
        "phase": phase,
        "batch": batch,
        "params": _parameters(network),
        "ms_per_iteration": milliseconds,
        "peak_memory_mb": peak_memory_mb(device, baseline),
    }


def format_table(rows: list[dict]) -> str:
    lines = ["| phase | batch | parameters | time | peak memory MB |", "|---|---|---|---|---|"]
    for row in rows:
        if row["phase"] == "sampling":
            time = (
                f"{row['ms_per_image'] / 1000:.2f} s/image ({row['sampling_steps']} DDIM steps; "
                f"{row['ms_per_step_per_image']:.1f} ms per step per image)"
            )
        else:
            time = f"{row['ms_per_iteration']:.0f} ms/iteration"
        lines.append(f"| {row['phase']} | {row['batch']} | {row['params']:,} | {time} | {row['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_ext.synthesis.benchmark",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels", type=int, default=1, help="image channels")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--autoencoder-batch-size", type=int, help="override the preset's autoencoder batch")
    parser.add_argument("--diffusion-batch-size", type=int, help="override the preset's diffusion batch")
    parser.add_argument("--sampling-batch-size", type=int, help="override the preset's sampling batch")
    parser.add_argument("--sampling-steps", type=int, help="override the preset's DDIM steps")
    parser.add_argument("--with-perceptual", action="store_true", help="include the LPIPS-VGG autoencoder term")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("-o", "--output", type=Path, help="also write the rows as JSON")
    return parser


def _run(arguments: tuple) -> dict:
    threads, *rest = arguments
    torch.set_num_threads(threads)
    return measure_phase(*rest)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    preset = PRESETS[args.preset].with_overrides(
        autoencoder_batch_size=args.autoencoder_batch_size,
        diffusion_batch_size=args.diffusion_batch_size,
        sampling_batch_size=args.sampling_batch_size,
        sampling_steps=args.sampling_steps,
    )
    context = multiprocessing.get_context("spawn")
    rows = []
    for phase in tqdm(args.phases, desc="benchmark", unit="phase"):
        job = (args.threads, phase, preset, args.channels, args.device, args.with_perceptual, args.warmup, args.repeats)
        with context.Pool(1) as pool:
            rows.append(pool.apply(_run, (job,)))
    device = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    print(
        f"\npreset {args.preset}: {preset.resolution}x{preset.resolution}, {args.channels} channel(s), "
        f"device {args.device} ({device}), {args.threads} CPU threads, torch {torch.__version__}\n"
    )
    print(format_table(rows))
    if args.output:
        args.output.write_text(json.dumps({"preset": args.preset, "device": args.device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
