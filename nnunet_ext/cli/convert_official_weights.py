"""``nnUNetv2_ext_convert_official_weights``: official weights -> a ``-pretrained_weights`` file for nnU-Net."""

from __future__ import annotations

import argparse

from nnunet_ext.command_line import HelpFormatter, exit_on_user_error
from nnunet_ext.official import ARCHITECTURES, official_architecture

PROG = "nnUNetv2_ext_convert_official_weights"


def build_parser() -> argparse.ArgumentParser:
    architectures = "; ".join(f"{name}: {entry.source} -> {entry.trainer}" for name, entry in ARCHITECTURES.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Map every tensor of a state dict trained with the authors' code (a released checkpoint or your "
        "own run of the official repository) onto our network and write a checkpoint that nnU-Net's "
        "'nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -pretrained_weights OUT' loads. Shapes are "
        "checked (a mismatch names the tensor), official tensors the official forward does not use are listed, any "
        "other official tensor our network has no place for is an error. Segmentation heads the official weights "
        "cannot fill (deep-supervision heads; all heads when --num-classes differs from the official class count) "
        f"keep our default initialisation and are listed. Architectures: {architectures}.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--arch", required=True, choices=list(ARCHITECTURES), help="architecture of the weights")
    parser.add_argument(
        "-i",
        "--input",
        required=True,
        help="official weights (torch.save): a state dict, or a checkpoint dict holding one under 'state_dict', "
        "'model', 'model_state_dict', 'network_weights', 'net', 'network' or 'weights'; 'module.' and "
        "'_orig_mod.' name prefixes are removed",
    )
    parser.add_argument("-o", "--output", required=True, help="checkpoint to write (for -pretrained_weights)")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="output channels of the network to write: for fine-tuning, the number of segmentation outputs of your "
        "nnU-Net dataset (labels including background). Default: the official head's class count. When it "
        "differs, the segmentation heads start from our default initialisation",
    )
    parser.add_argument(
        "--input-channels",
        type=int,
        default=3,
        help="input channels the official network was trained with; must equal your dataset's channel count "
        "for fine-tuning (the published networks take 3)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="unpickle arbitrary Python objects stored beside the tensors (only for files you trust); without it "
        "only tensors and plain containers are read",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from nnunet_ext.official.convert import convert_state_dict, load_official_state_dict, write_pretrained_weights

    with exit_on_user_error(PROG):
        for option in ("num_classes", "input_channels"):
            value = getattr(args, option)
            if value is not None and value < 1:
                raise ValueError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
        architecture = official_architecture(args.arch)
        official = load_official_state_dict(args.input, args.unsafe_load)
        conversion = convert_state_dict(architecture, official, args.input_channels, args.num_classes)
        provenance = {"arch": args.arch, "source": architecture.source, "input": str(args.input)}
        path = write_pretrained_weights(conversion, args.output, provenance, args.overwrite)
    print(conversion.summary())
    print(f"written: {path}")
    print(f"fine-tune with: nnUNetv2_train DATASET 2d FOLD -tr {architecture.trainer} -pretrained_weights {path}")


if __name__ == "__main__":
    main()
