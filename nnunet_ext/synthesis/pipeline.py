"""``nnUNetv2_ext_synthesize`` end to end: validate, read the fold's images, train both stages, sample, write.

Model folder ``$nnUNet_results/DatasetXXX_Name/nnUNetv2_ext_synthesize__{preset}__fold{F}/``:

- ``config.json``: what the checkpoints depend on (preset settings except step counts, dataset, configuration,
  plans, fold, training cases, channels, intensity range, classes, perceptual term). ``--resume`` with another
  config is an error; so is an existing folder without ``--resume`` (nothing trained is ever overwritten).
- ``autoencoder.pt``, ``diffusion.pt``: network, optimizer state and completed steps, written every ``save_every``
  steps and at the end of each stage. Raising a stage's steps and resuming continues its training; the autoencoder
  cannot continue once the diffusion stage has started (the latents would change under it).
- ``preview_{run}.png``: real training images (top) and synthetic images (bottom).

Samples go to ``imagesSynth/`` (see :mod:`~nnunet_ext.synthesis.writing`) with ``{run}.json`` (or
``{run}_shard{k}of{K}.json``) as provenance, rewritten after every batch. ``--resume`` keeps the images the
provenance already lists and samples the rest; without it, existing images or provenance of the run are an error.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import monai
import numpy as np
import torch
from monai.inferers import LatentDiffusionInferer
from monai.losses import SSIMLoss
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from tqdm import tqdm

import nnunet_ext
from nnunet_ext.data.atomic import atomic_write_text
from nnunet_ext.synthesis.images import TrainingImages, load_training_images
from nnunet_ext.synthesis.memorisation import MemorisationReference, build_reference
from nnunet_ext.synthesis.models import (
    ClassConditionedUNet,
    build_autoencoder,
    build_diffusion_unet,
    build_training_scheduler,
)
from nnunet_ext.synthesis.perceptual import LPIPSVGG, load_perceptual_loss
from nnunet_ext.synthesis.presets import PRESETS, LDMPreset
from nnunet_ext.synthesis.sampling import Sampler, batches, shard_indices
from nnunet_ext.synthesis.seeds import derived_seed
from nnunet_ext.synthesis.source import SynthesisInputError, SynthesisSource, environment_folder, resolve_source
from nnunet_ext.synthesis.training import (
    Stage,
    autoencoder_loss,
    completed_steps,
    diffusion_loss,
    load_checkpoint,
    run_stage,
)
from nnunet_ext.synthesis.writing import (
    PREVIEW_COLUMNS,
    SyntheticImageWriter,
    case_name,
    run_name,
    write_preview,
    write_provenance,
)

logger = logging.getLogger(__name__)

TRAINING_SEED = 0
#: Medfusion uses the latents as they are (no scale factor)
LATENT_SCALE_FACTOR = 1.0


@dataclass(frozen=True)
class SynthesisOptions:
    """The command's options (see ``nnUNetv2_ext_synthesize --help``); None overrides keep the preset's value."""

    dataset: int | str
    num_images: int
    configuration: str = "2d"
    fold: int | str = 0
    plans: str = "nnUNetPlans"
    preset: str = "paper"
    device: str = "cpu"
    resume: bool = False
    seed: int = 0
    shard: int = 0
    num_shards: int = 1
    autoencoder_steps: int | None = None
    diffusion_steps: int | None = None
    sampling_steps: int | None = None
    sampling_batch_size: int | None = None
    guidance_scale: float | None = None
    save_every: int | None = None
    class_labels: Path | None = None
    perceptual_weights: Path | None = None


@dataclass(frozen=True)
class SynthesisResult:
    model_folder: Path
    provenance: Path | None
    preview: Path | None
    cases: list[str]


def resolve_preset(options: SynthesisOptions) -> LDMPreset:
    if options.preset not in PRESETS:
        raise SynthesisInputError(f"unknown preset {options.preset!r} (choose from {sorted(PRESETS)})")
    preset = PRESETS[options.preset].with_overrides(
        autoencoder_steps=options.autoencoder_steps,
        diffusion_steps=options.diffusion_steps,
        sampling_steps=options.sampling_steps,
        sampling_batch_size=options.sampling_batch_size,
        sampling_guidance_scale=options.guidance_scale,
    )
    if options.save_every is not None:
        preset = replace(preset, save_every=options.save_every)
    try:
        preset.validate()
    except ValueError as error:
        raise SynthesisInputError(str(error)) from error
    return preset


def model_folder(source: SynthesisSource, preset_name: str) -> Path:
    results = environment_folder("nnUNet_results")
    return results / source.dataset_name / f"nnUNetv2_ext_synthesize__{preset_name}__fold{source.fold_tag}"


def load_class_labels(path: Path | None, source: SynthesisSource) -> dict[str, str] | None:
    """``{case: class name}`` for every training case of the fold, from a JSON object file (None: unconditional)."""
    if path is None:
        return None
    labels = json.loads(Path(path).read_text())
    if not isinstance(labels, dict):
        raise SynthesisInputError(f"{path}: expected a JSON object {{case: class}}")
    missing = sorted(set(source.cases) - set(labels))
    if missing:
        raise SynthesisInputError(f"{path}: no class for training case(s) {missing}")
    return {case: str(labels[case]) for case in source.cases}


def check_model_folder(folder: Path, identity: dict, resume: bool) -> None:
    """Create ``config.json``, or check that an existing folder belongs to this config and ``--resume`` was given."""
    config_file = folder / "config.json"
    identity = json.loads(json.dumps(identity))
    if config_file.is_file():
        if not resume:
            raise SynthesisInputError(
                f"{folder} already holds a model: pass --resume to continue or reuse it, or delete the folder to "
                "train from scratch"
            )
        stored = json.loads(config_file.read_text())
        differing = sorted(key for key in stored.keys() | identity.keys() if stored.get(key) != identity.get(key))
        if differing:
            raise SynthesisInputError(
                f"--resume: {config_file} was written for another configuration; differing: {', '.join(differing)}"
            )
        return
    if resume:
        logger.info(f"--resume: no model in {folder} yet, training from scratch")
    atomic_write_text(config_file, json.dumps(identity, indent=2))


def _provenance_file(source: SynthesisSource, options: SynthesisOptions) -> Path:
    name = run_name(source.fold_tag, options.seed)
    if options.num_shards > 1:
        name += f"_shard{options.shard}of{options.num_shards}"
    return source.synthetic_folder / f"{name}.json"


def _previous_run(provenance: Path, header: dict, resume: bool) -> dict | None:
    """The provenance of an earlier (interrupted) invocation of this run, checked to be of the same model and
    sampling settings (the completed training steps are checked after training)."""
    if not provenance.is_file():
        return None
    if not resume:
        raise SynthesisInputError(
            f"{provenance} exists: pass --resume to complete that run, choose another --seed, or delete its images"
        )
    previous = json.loads(provenance.read_text())
    for section in ("model", "sampling"):
        if previous.get(section) != header[section]:
            raise SynthesisInputError(f"--resume: {provenance} was written by another {section} configuration")
    return previous


def train(
    training: TrainingImages,
    preset: LDMPreset,
    options: SynthesisOptions,
    folder: Path,
    labels: torch.Tensor | None,
    num_classes: int,
    perceptual: LPIPSVGG | None,
) -> Sampler:
    """Both stages (``labels``: class index per training image, or None); returns the trained :class:`Sampler`."""
    device = torch.device(options.device)
    channels = training.num_channels
    torch.manual_seed(derived_seed(TRAINING_SEED))
    autoencoder = build_autoencoder(preset.autoencoder, channels).to(device)
    unet = build_diffusion_unet(preset.diffusion, preset.autoencoder.latent_channels, num_classes).to(device)
    network = ClassConditionedUNet(unet) if num_classes else unet
    perceptual = perceptual.to(device) if perceptual is not None else None
    ssim = SSIMLoss(spatial_dims=2, data_range=1.0)
    images = training.images

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        indices = torch.randint(len(images), (size,))
        return images[indices].to(device), None if labels is None else labels[indices].to(device)

    autoencoder_checkpoint, diffusion_checkpoint = folder / "autoencoder.pt", folder / "diffusion.pt"
    if diffusion_checkpoint.is_file() and completed_steps(autoencoder_checkpoint) < preset.autoencoder.steps:
        raise SynthesisInputError(
            f"{autoencoder_checkpoint} has {completed_steps(autoencoder_checkpoint)} steps, fewer than the "
            f"{preset.autoencoder.steps} requested, but the diffusion stage has already started on it"
        )
    run_stage(
        Stage(
            "autoencoder",
            autoencoder,
            torch.optim.Adam(autoencoder.parameters(), lr=preset.autoencoder.learning_rate),
            lambda: autoencoder_loss(
                autoencoder, batch(preset.autoencoder.batch_size)[0], preset.autoencoder, ssim, perceptual
            ),
            preset.autoencoder.steps,
        ),
        autoencoder_checkpoint,
        preset.save_every,
        TRAINING_SEED,
    )
    autoencoder.requires_grad_(False)
    inferer = LatentDiffusionInferer(build_training_scheduler(preset.diffusion), scale_factor=LATENT_SCALE_FACTOR)
    factor = preset.autoencoder.downsampling
    latent_shape = (preset.autoencoder.latent_channels, preset.resolution // factor, preset.resolution // factor)
    run_stage(
        Stage(
            "diffusion",
            network,
            torch.optim.AdamW(network.parameters(), lr=preset.diffusion.learning_rate),
            lambda: diffusion_loss(
                inferer, autoencoder, network, *batch(preset.diffusion.batch_size), latent_shape, preset.diffusion
            ),
            preset.diffusion.steps,
        ),
        diffusion_checkpoint,
        preset.save_every,
        TRAINING_SEED,
    )
    frequencies = None if labels is None else torch.bincount(labels, minlength=num_classes).double()
    return Sampler(autoencoder, network, inferer, preset.diffusion, preset.sampling, latent_shape, frequencies, device)


def synthesize(options: SynthesisOptions) -> SynthesisResult:
    """Run the whole command; see the module docstring for what is written where.

    Raises:
        SynthesisInputError: unusable inputs or a conflicting earlier run, always before any training or sampling.
    """
    started = time.perf_counter()
    if options.num_images < 0:
        raise SynthesisInputError(f"-n must be >= 0, got {options.num_images}")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise SynthesisInputError("--device cuda requested but CUDA is not available")
    preset = resolve_preset(options)
    try:
        indices = shard_indices(options.num_images, options.shard, options.num_shards)
    except ValueError as error:
        raise SynthesisInputError(str(error)) from error
    source = resolve_source(options.dataset, options.configuration, options.fold, options.plans)
    class_of_case = load_class_labels(options.class_labels, source)
    training = load_training_images(source, preset.resolution)
    class_names = sorted(set(class_of_case.values())) if class_of_case else []
    labels = (
        torch.tensor([class_names.index(class_of_case[case]) for case in training.case_ids]) if class_names else None
    )
    perceptual = load_perceptual_loss(options.perceptual_weights)
    folder = model_folder(source, options.preset)
    identity = {
        "preset": options.preset,
        "settings": preset.training_identity(),
        "dataset": source.dataset_name,
        "configuration": source.configuration,
        "plans": source.plans_identifier,
        "fold": source.fold_tag,
        "training_cases": sorted(source.cases),
        "num_training_images": len(training.case_ids),
        "channels": training.num_channels,
        "intensity_range": asdict(training.intensity),
        "classes": class_names or None,
        "perceptual_loss": perceptual is not None,
        "training_seed": TRAINING_SEED,
        "latent_scale_factor": LATENT_SCALE_FACTOR,
    }
    natural = source.reader_class is NaturalImage2DIO
    writer = SyntheticImageWriter(source.synthetic_folder, training, source.file_ending, natural)
    cases = {case_name(source.fold_tag, options.seed, i): i for i in indices}
    provenance = _provenance_file(source, options)
    header = {
        "model": {"folder": str(folder), **json.loads(json.dumps(identity))},
        "sampling": {
            "seed": options.seed,
            "num_images": options.num_images,
            "shard": options.shard,
            "num_shards": options.num_shards,
            **asdict(preset.sampling),
        },
    }
    previous = _previous_run(provenance, header, options.resume) if cases else None
    kept = {r["case"]: r for r in previous["images"] if writer.is_complete(r["case"])} if previous else {}
    if cases and not options.resume:
        leftovers = writer.existing_cases(list(cases))
        if leftovers:
            raise SynthesisInputError(
                f"{source.synthetic_folder} already holds images of this run (e.g. {leftovers[0]}): pass --resume, "
                "choose another --seed, or delete them"
            )
    check_model_folder(folder, identity, options.resume)
    sampler = train(training, preset, options, folder, labels, len(class_names), perceptual)
    if not cases:
        return SynthesisResult(folder, None, None, [])

    steps = {stage: load_checkpoint(folder / f"{stage}.pt")["step"] for stage in ("autoencoder", "diffusion")}
    header["training"] = {"completed_steps": steps}
    if kept and previous.get("training") != header["training"]:
        raise SynthesisInputError(
            f"--resume: the images listed in {provenance} were sampled from the model after "
            f"{previous.get('training')} training steps, now it has {steps}: sample with another --seed"
        )
    reference = build_reference(training.images, training.case_ids)
    records = dict(kept)
    todo = [case for case in cases if case not in kept]
    shown: list[torch.Tensor] = []
    progress = tqdm(total=len(cases), initial=len(kept), desc="sampling", unit="image")
    for batch_cases in batches(todo, preset.sampling.batch_size):
        images, classes = sampler.sample(options.seed, [cases[c] for c in batch_cases])
        shown += list(images[: PREVIEW_COLUMNS - len(shown)])
        distances, nearest_cases, copies = reference.check(images)
        files = writer.write(batch_cases, images)
        for j, case in enumerate(batch_cases):
            records[case] = {
                "case": case,
                "index": cases[case],
                "files": files[j],
                "class": None if classes is None else class_names[classes[j]],
                "nearest_training_case": nearest_cases[j],
                "nearest_training_distance": distances[j],
                "copy_of_training_image": copies[j],
            }
        write_provenance(provenance, _provenance(header, source, training, reference, records, False, started))
        progress.update(len(batch_cases))
    progress.close()
    preview = folder / f"preview_{provenance.stem}.png"
    if shown:
        spread = torch.linspace(0, len(training.images) - 1, PREVIEW_COLUMNS).round().long()
        write_preview(preview, training.images[spread], torch.stack(shown))
    record = _provenance(header, source, training, reference, records, True, started)
    record["preview"] = str(preview)
    write_provenance(provenance, record)
    flagged = record["memorisation"]["copies"]
    if flagged:
        logger.warning(f"{len(flagged)} synthetic image(s) are near-copies of training images: {flagged}")
    return SynthesisResult(folder, provenance, preview, list(cases))


def _provenance(
    header: dict,
    source: SynthesisSource,
    training: TrainingImages,
    reference: MemorisationReference,
    records: dict[str, dict],
    complete: bool,
    started: float,
) -> dict:
    images = [records[case] for case in sorted(records)]
    distances = [r["nearest_training_distance"] for r in images]
    return {
        "tool": "nnUNetv2_ext_synthesize",
        "complete": complete,
        "versions": {
            "nnunet_ext": nnunet_ext.__version__,
            "monai": monai.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        **header,
        "source": {
            "raw_folder": str(source.raw_folder),
            "cases": sorted(source.cases),
            "num_images": len(training.case_ids),
        },
        "output": {
            "folder": str(source.synthetic_folder),
            "file_ending": source.file_ending,
            "channels_per_file": list(training.layout.channels_per_file),
            "dtypes": list(training.layout.dtypes),
            "shape": list(training.geometry.shape),
            "spacing": list(training.geometry.spacing),
            "intensity_range": asdict(training.intensity),
        },
        "memorisation": {
            **reference.summary(),
            "min_nearest_distance": float(np.min(distances)) if distances else None,
            "copies": [r["case"] for r in images if r["copy_of_training_image"]],
        },
        "seconds": round(time.perf_counter() - started, 1),
        "images": images,
    }
