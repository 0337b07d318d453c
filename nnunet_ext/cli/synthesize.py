"""``nnUNetv2_ext_synthesize``: train an LDM on a fold's labeled images and sample an unlabeled pool from it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nnunet_ext.command_line import HelpFormatter, exit_on_user_error
from nnunet_ext.synthesis.presets import PRESETS, WEIGHTS_VARIABLE

# torch (and everything importing it) is imported after parsing, so --help answers at once


def fold(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fold must be an integer or 'all', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    tiny, cpu, paper = PRESETS["tiny"], PRESETS["cpu"], PRESETS["paper"]
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_synthesize",
        description="Train Medfusion's latent diffusion model (MONAI KL-autoencoder + latent diffusion UNet, "
        "DDIM sampler) on the labeled training images of one fold (never its validation images) and write N "
        "synthetic images to $nnUNet_raw/DatasetXXX/imagesSynth/ in the dataset's own format, channels and "
        "intensity range, with a provenance JSON beside them and a real-vs-synthetic preview PNG in the model "
        "folder $nnUNet_results/DatasetXXX/nnUNetv2_ext_synthesize__PRESET__foldF/. The dataset must be planned "
        "(nnUNetv2_plan_and_preprocess); 3D datasets are sliced along the 2d configuration's axis and get "
        "single-slice volumes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or DatasetXXX_Name")
    parser.add_argument("-c", "--configuration", default="2d", help="a 2D configuration of the plans")
    parser.add_argument(
        "-n", "--num-images", type=int, required=True, help="synthetic images to sample (0: only train the model)"
    )
    parser.add_argument(
        "-f",
        "--fold",
        type=fold,
        default=0,
        help="fold of splits_final.json whose training cases are used (created like nnU-Net does if missing), "
        "or 'all' for every training case",
    )
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help=f"paper: Medfusion's settings at {paper.resolution}x{paper.resolution} (GPU); cpu: "
        f"{cpu.resolution}x{cpu.resolution}, narrower networks, under an hour on a 2-core CPU; tiny: "
        f"{tiny.resolution}x{tiny.resolution}, narrow networks, minutes on a CPU",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="device to train and sample on (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted or finished run: training from the last checkpoints, sampling with the "
        "images not yet written (required to reuse an existing model folder)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed; image i uses seed (SEED, i)")
    parser.add_argument(
        "--shard",
        type=int,
        default=0,
        help="with --num-shards K: sample only the images i with i %% K == SHARD (one process or GPU per shard; "
        "train first with -n 0, then start the shards with --resume)",
    )
    parser.add_argument("--num-shards", type=int, default=1, help="number of sampling shards")
    parser.add_argument("--autoencoder-steps", type=int, help="override the preset's autoencoder training steps")
    parser.add_argument("--diffusion-steps", type=int, help="override the preset's diffusion training steps")
    parser.add_argument("--sampling-steps", type=int, help="override the preset's DDIM steps")
    parser.add_argument("--sampling-batch-size", type=int, help="override the preset's sampling batch size")
    parser.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance scale with --class-labels (1: none)"
    )
    parser.add_argument("--save-every", type=int, help="override the preset's checkpoint interval (steps)")
    parser.add_argument(
        "--class-labels",
        type=Path,
        help="JSON object {case: class} for every training case: trains a class-conditional model "
        "(condition dropout 0.5); samples draw classes with the training frequencies",
    )
    parser.add_argument(
        "--perceptual-weights",
        type=Path,
        help="local torchvision VGG16 state dict for the LPIPS term of the autoencoder loss (also "
        f"${WEIGHTS_VARIABLE}); without it the term is off. Nothing is ever downloaded",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from nnunet_ext.synthesis.pipeline import SynthesisOptions, synthesize
    from nnunet_ext.synthesis.source import SynthesisInputError

    options = SynthesisOptions(
        dataset=args.dataset,
        num_images=args.num_images,
        configuration=args.configuration,
        fold=args.fold,
        plans=args.plans,
        preset=args.preset,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        resume=args.resume,
        seed=args.seed,
        shard=args.shard,
        num_shards=args.num_shards,
        autoencoder_steps=args.autoencoder_steps,
        diffusion_steps=args.diffusion_steps,
        sampling_steps=args.sampling_steps,
        sampling_batch_size=args.sampling_batch_size,
        guidance_scale=args.guidance_scale,
        save_every=args.save_every,
        class_labels=args.class_labels,
        perceptual_weights=args.perceptual_weights,
    )
    with exit_on_user_error("nnUNetv2_ext_synthesize", (SynthesisInputError, OSError)):
        result = synthesize(options)
    print(f"model: {result.model_folder}")
    if result.provenance is not None:
        print(f"{len(result.cases)} synthetic images: {result.provenance.parent}")
        print(f"provenance: {result.provenance}\npreview: {result.preview}")


if __name__ == "__main__":
    main()
