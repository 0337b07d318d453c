"""``nnUNetv2_ext_synthesize`` (tiny preset, a few training steps): written images, provenance, determinism,
resumption, memorisation check, input errors, and the MONAI building blocks configured as published.

The runs use copies of the session's planned synthetic datasets (990: 2D PNG, 991: 3D NIfTI) under new ids, so
``imagesSynth/`` and the model folders of the shared datasets stay untouched. Quality is not tested here: a few
steps check the mechanics.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.utils import (
    create_lists_from_splitted_dataset_folder,
    get_identifiers_from_splitted_dataset_folder,
)
from PIL import Image
from skimage import io as skimage_io

from nnunet_ext.ssl.raw_pool import find_pool_cases, read_pool_case
from nnunet_ext.synthesis import training as training_module
from nnunet_ext.synthesis import writing as writing_module
from nnunet_ext.synthesis.memorisation import build_reference
from nnunet_ext.synthesis.models import (
    SeededDDIMScheduler,
    build_autoencoder,
    build_diffusion_unet,
    build_training_scheduler,
)
from nnunet_ext.synthesis.perceptual import LPIPSVGG, load_perceptual_loss, vgg16_features
from nnunet_ext.synthesis.pipeline import SynthesisOptions, synthesize
from nnunet_ext.synthesis.presets import PRESETS
from nnunet_ext.synthesis.source import SynthesisInputError

PNG_ID, NIFTI_ID = 993, 994
FAST = {"preset": "tiny", "device": "cpu", "autoencoder_steps": 6, "diffusion_steps": 6, "sampling_steps": 8}


def copy_dataset(environment, source_id: int, source_name: str, target_id: int) -> str:
    """Copy a planned raw dataset and its plans to a new id (nothing preprocessed is needed)."""
    target_name = f"Dataset{target_id:03d}_SynthCopy"
    shutil.copytree(environment.raw / source_name, environment.raw / target_name)
    (environment.preprocessed / target_name).mkdir()
    shutil.copy(environment.preprocessed / source_name / "nnUNetPlans.json", environment.preprocessed / target_name)
    return target_name


@pytest.fixture(scope="module")
def environment(nnunet_environment, synthetic_2d, synthetic_3d):
    """The isolated nnU-Net folders as this process's environment; the copies of datasets 990 and 991.

    The tiny networks run on one thread: at 32x32 a second one gains nothing, and it stalls on a busy machine.
    """
    png = copy_dataset(nnunet_environment, synthetic_2d.dataset_id, synthetic_2d.folder_name, PNG_ID)
    nifti = copy_dataset(nnunet_environment, synthetic_3d.dataset_id, synthetic_3d.folder_name, NIFTI_ID)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            patch.setenv(name, nnunet_environment.env[name])
        patch.delenv("nnUNet_ext_vgg16_weights", raising=False)
        yield nnunet_environment, png, nifti
    torch.set_num_threads(threads)


def no_network(*args, **kwargs):
    raise AssertionError("synthesis must never open a network connection")


@pytest.fixture(scope="module")
def png_run(environment):
    """One complete run on the PNG dataset (fold 0, 6 images, seed 0), with network connections forbidden."""
    nnunet, png, _ = environment
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        result = synthesize(SynthesisOptions(dataset=PNG_ID, num_images=6, sampling_batch_size=4, **FAST))
    return nnunet.raw / png, result


def training_images(raw: Path, cases: list[str]) -> list[np.ndarray]:
    return [skimage_io.imread(raw / "imagesTr" / f"{case}_0000.png") for case in cases]


def test_png_images_have_the_datasets_format_size_and_range(png_run):
    raw, result = png_run
    provenance = json.loads(result.provenance.read_text())
    real = training_images(raw, provenance["source"]["cases"])
    for case in result.cases:
        image = skimage_io.imread(raw / "imagesSynth" / f"{case}_0000.png")
        assert image.dtype == real[0].dtype == np.uint8
        assert image.shape == real[0].shape == (96, 96)
        assert min(r.min() for r in real) <= image.min() and image.max() <= max(r.max() for r in real)
        assert image.std() > 0


def test_naming_and_channels_follow_nnunet_image_rules(png_run):
    raw, result = png_run
    folder = str(raw / "imagesSynth")
    identifiers = get_identifiers_from_splitted_dataset_folder(folder, ".png")
    assert sorted(identifiers) == sorted(result.cases) == [f"synth_f0_s0_{i:05d}" for i in range(6)]
    files = create_lists_from_splitted_dataset_folder(folder, ".png", identifiers)
    channels = json.loads((raw / "dataset.json").read_text())["channel_names"]
    for case_files in files:
        assert len(case_files) == len(channels)
        data, _ = NaturalImage2DIO().read_images(case_files)
        assert data.shape == (len(channels), 1, 96, 96)
    assert not [p for p in (raw / "imagesSynth").iterdir() if p.name.startswith(".")]
    assert not [p for p in raw.iterdir() if p.name.startswith(".")], "staging folders must be removed"


def test_images_pass_the_unlabeled_pool_validator(png_run):
    raw, result = png_run
    cases = find_pool_cases(raw / "imagesSynth", ".png", 1)
    assert [case.name for case in cases] == sorted(result.cases)
    for case in cases:
        data, _ = read_pool_case(case, NaturalImage2DIO, 1, True)
        assert data.shape == (1, 1, 96, 96)


def test_provenance_names_the_model_fold_cases_and_every_image(png_run, environment):
    raw, result = png_run
    nnunet = environment[0]
    provenance = json.loads(result.provenance.read_text())
    splits = json.loads((nnunet.preprocessed / raw.name / "splits_final.json").read_text())
    assert provenance["complete"] is True
    assert provenance["source"]["cases"] == sorted(splits[0]["train"])
    assert not set(provenance["source"]["cases"]) & set(splits[0]["val"])
    assert provenance["model"]["folder"] == str(result.model_folder)
    assert provenance["training"]["completed_steps"] == {"autoencoder": 6, "diffusion": 6}
    assert provenance["model"]["perceptual_loss"] is False
    assert provenance["sampling"] | {"seed": 0, "steps": 8, "eta": 1.0, "num_images": 6} == provenance["sampling"]
    assert [r["case"] for r in provenance["images"]] == result.cases
    for record in provenance["images"]:
        assert all((raw / "imagesSynth" / name).is_file() for name in record["files"])
        assert record["nearest_training_case"] in provenance["source"]["cases"]
    assert (result.model_folder / "autoencoder.pt").is_file() and (result.model_folder / "diffusion.pt").is_file()
    preview = Image.open(result.preview)
    assert preview.format == "PNG" and preview.size == (8 * 34 - 2, 2 * 32 + 6)


def test_synthetic_images_are_not_copies_and_copies_are_flagged(png_run):
    _, result = png_run
    provenance = json.loads(result.provenance.read_text())
    memorisation = provenance["memorisation"]
    assert memorisation["threshold"] > 0 and memorisation["copies"] == []
    assert all(r["nearest_training_distance"] > memorisation["threshold"] for r in provenance["images"])

    generator = torch.Generator().manual_seed(0)
    real = torch.rand(6, 1, 32, 32, generator=generator) * 2 - 1
    reference = build_reference(real, [f"case{i}" for i in range(6)])
    literal = real[[2]]
    noisy_copy = (real[[4]] + 0.05 * torch.randn(1, 1, 32, 32, generator=generator)).clamp(-1, 1)
    novel = torch.rand(1, 1, 32, 32, generator=generator) * 2 - 1
    distances, nearest_cases, copies = reference.check(torch.cat([literal, noisy_copy, novel]))
    assert copies == [True, True, False]
    assert nearest_cases[:2] == ["case2", "case4"] and distances[0] == pytest.approx(0, abs=1e-6)


def test_sampling_is_deterministic_by_seed_and_independent_of_sharding(png_run, environment):
    raw, _ = png_run
    synth = raw / "imagesSynth"
    options = SynthesisOptions(dataset=PNG_ID, num_images=5, seed=1, resume=True, sampling_batch_size=2, **FAST)
    for shard in (0, 1):
        synthesize(replace(options, shard=shard, num_shards=2))
    assert (synth / "synth_f0_s1_shard0of2.json").is_file() and (synth / "synth_f0_s1_shard1of2.json").is_file()
    sharded = {i: skimage_io.imread(synth / f"synth_f0_s1_{i:05d}_0000.png") for i in range(5)}
    for path in synth.glob("synth_f0_s1_*"):
        path.unlink()
    synthesize(replace(options, sampling_batch_size=4))
    for i in range(5):
        whole = skimage_io.imread(synth / f"synth_f0_s1_{i:05d}_0000.png")
        assert np.abs(whole.astype(int) - sharded[i]).max() <= 1
    seed_0 = skimage_io.imread(synth / "synth_f0_s0_00000_0000.png")
    assert np.abs(seed_0.astype(int) - sharded[0]).mean() > 5


def test_existing_model_or_images_need_resume(png_run):
    with pytest.raises(SynthesisInputError, match="already holds a model"):
        synthesize(SynthesisOptions(dataset=PNG_ID, num_images=0, **FAST))
    with pytest.raises(SynthesisInputError, match="pass --resume"):
        synthesize(SynthesisOptions(dataset=PNG_ID, num_images=2, seed=0, **FAST))


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["network"]


def test_resume_after_interruption_equals_an_uninterrupted_run(environment, tmp_path, monkeypatch):
    options = SynthesisOptions(dataset=PNG_ID, num_images=0, fold=1, save_every=2, **FAST)
    calls = {"n": 0}
    original = training_module.diffusion_loss

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training_module, "diffusion_loss", interrupted)
    monkeypatch.setattr("nnunet_ext.synthesis.pipeline.diffusion_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(options)
    folder = environment[0].results / environment[1] / "nnUNetv2_ext_synthesize__tiny__fold1"
    assert torch.load(folder / "diffusion.pt", weights_only=True)["step"] == 2
    synthesize(replace(options, resume=True))
    resumed = state(folder / "diffusion.pt")

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    synthesize(options)
    uninterrupted = state(tmp_path / environment[1] / "nnUNetv2_ext_synthesize__tiny__fold1" / "diffusion.pt")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key])

    labels = tmp_path / "classes.json"
    cases = json.loads((folder / "config.json").read_text())["training_cases"]
    labels.write_text(json.dumps({case: i % 2 for i, case in enumerate(cases)}))
    monkeypatch.setenv("nnUNet_results", str(folder.parent.parent))
    with pytest.raises(SynthesisInputError, match="differing: classes"):
        synthesize(replace(options, resume=True, class_labels=labels))


def test_interrupted_sampling_resumes_with_the_missing_images(png_run, monkeypatch):
    raw, _ = png_run
    options = SynthesisOptions(dataset=PNG_ID, num_images=4, seed=7, resume=True, sampling_batch_size=2, **FAST)
    original = writing_module.SyntheticImageWriter.write
    calls = {"n": 0}

    def crash_on_second_batch(self, cases, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return original(self, cases, images)

    monkeypatch.setattr(writing_module.SyntheticImageWriter, "write", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize(options)
    provenance = raw / "imagesSynth" / "synth_f0_s7.json"
    partial = json.loads(provenance.read_text())
    assert partial["complete"] is False and [r["index"] for r in partial["images"]] == [0, 1]
    assert not (raw / "imagesSynth" / "synth_f0_s7_00002_0000.png").exists()
    first = (raw / "imagesSynth" / "synth_f0_s7_00000_0000.png").stat().st_mtime_ns
    monkeypatch.setattr(writing_module.SyntheticImageWriter, "write", original)
    synthesize(options)
    complete = json.loads(provenance.read_text())
    assert complete["complete"] is True and [r["index"] for r in complete["images"]] == [0, 1, 2, 3]
    assert (raw / "imagesSynth" / "synth_f0_s7_00000_0000.png").stat().st_mtime_ns == first


def test_nifti_dataset_gets_single_slice_volumes_with_its_geometry(environment):
    nnunet, _, nifti = environment
    result = synthesize(SynthesisOptions(dataset=NIFTI_ID, num_images=2, **FAST))
    provenance = json.loads(result.provenance.read_text())
    low, high = provenance["output"]["intensity_range"]["low"][0], provenance["output"]["intensity_range"]["high"][0]
    training = [nnunet.raw / nifti / "imagesTr" / f"{case}_0000.nii.gz" for case in provenance["source"]["cases"]]
    real = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in training])
    assert real.min() <= low < high <= real.max()
    assert np.mean((real >= low) & (real <= high)) > 0.98
    reference = sitk.ReadImage(str(training[0]))
    for case in result.cases:
        path = nnunet.raw / nifti / "imagesSynth" / f"{case}_0000.nii.gz"
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == (48, 48, 1)
        assert image.GetSpacing() == pytest.approx((1.0, 1.0, 3.0))
        assert image.GetDirection() == reference.GetDirection() and image.GetOrigin() == reference.GetOrigin()
        array = sitk.GetArrayFromImage(image)
        assert array.dtype == real.dtype and low - 1e-3 <= array.min() and array.max() <= high + 1e-3
        data, properties = SimpleITKIO().read_images([str(path)])
        assert data.shape == (1, 1, 48, 48) and list(properties["spacing"]) == pytest.approx([3.0, 1.0, 1.0])


def test_unsupported_inputs_are_clear_errors(environment):
    nnunet, png, _ = environment
    with pytest.raises(SynthesisInputError, match="3D"):
        synthesize(SynthesisOptions(dataset=NIFTI_ID, num_images=1, configuration="3d_fullres", **FAST))
    with pytest.raises(SynthesisInputError, match=r"folds 0\.\.4"):
        synthesize(SynthesisOptions(dataset=PNG_ID, num_images=1, fold=5, **FAST))

    mixed = copy_dataset(nnunet, PNG_ID, png, 996)
    rgb_case = sorted((nnunet.raw / mixed / "imagesTr").iterdir())[-1]
    gray = skimage_io.imread(rgb_case)
    skimage_io.imsave(rgb_case, np.stack([gray] * 3, axis=-1), check_contrast=False)
    with pytest.raises(SynthesisInputError, match="mixed channel counts"):
        synthesize(SynthesisOptions(dataset=996, num_images=1, fold="all", **FAST))

    few = copy_dataset(nnunet, PNG_ID, png, 997)
    for path in sorted((nnunet.raw / few / "imagesTr").iterdir())[3:]:
        path.unlink()
        (nnunet.raw / few / "labelsTr" / path.name.replace("_0000", "")).unlink()
    with pytest.raises(SynthesisInputError, match="too few training images"):
        synthesize(SynthesisOptions(dataset=997, num_images=1, fold="all", **FAST))


def test_command_line_reports_errors_without_a_traceback(environment):
    import subprocess
    import sys

    nnunet = environment[0]
    executable = Path(sys.executable).parent / "nnUNetv2_ext_synthesize"
    result = subprocess.run(
        [str(executable), "-d", str(NIFTI_ID), "-c", "3d_fullres", "-n", "1", "--preset", "tiny"],
        env=nnunet.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "3D" in result.stderr and "Traceback" not in result.stderr


def test_perceptual_term_comes_from_a_local_file_only(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("nnUNet_ext_vgg16_weights", raising=False)
    with caplog.at_level(logging.WARNING):
        assert load_perceptual_loss(None) is None
    assert "nothing is downloaded" in caplog.text

    torch.manual_seed(0)
    weights = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg16_features().state_dict().items()}, weights)
    monkeypatch.setenv("nnUNet_ext_vgg16_weights", str(weights))
    loss = load_perceptual_loss(None)
    assert isinstance(loss, LPIPSVGG)
    a, b = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    b.requires_grad_(True)
    assert torch.allclose(loss(a, a), torch.zeros(2))
    distance = loss(a, b)
    assert distance.shape == (2,) and (distance > 0).all()
    distance.sum().backward()
    assert b.grad.abs().sum() > 0
    rgb = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(rgb, rgb.flip(-1)).shape == (2,)
    torch.save({"classifier.0.weight": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match="not a torchvision vgg16"):
        load_perceptual_loss(weights)


def test_paper_preset_is_medfusion_on_monai_blocks():
    paper = PRESETS["paper"]
    assert paper.resolution == 256 and paper.autoencoder.downsampling == 8
    assert paper.autoencoder.channels == (64, 128, 256, 512) and paper.autoencoder.latent_channels == 8
    assert paper.diffusion.channels == (256, 256, 512, 1024)
    assert (paper.sampling.steps, paper.sampling.eta) == (150, 1.0)
    autoencoder = build_autoencoder(paper.autoencoder, channels=3)
    with torch.no_grad():
        z_mu, _ = autoencoder.encode(torch.zeros(1, 3, 256, 256))
    assert z_mu.shape == (1, 8, 32, 32)
    unet = build_diffusion_unet(paper.diffusion, 8, num_classes=2)
    assert unet.num_class_embeds == 3
    betas = build_training_scheduler(paper.diffusion).betas
    expected = torch.linspace(0.002**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(betas.double(), expected, rtol=1e-5, atol=1e-8)
    scheduler = SeededDDIMScheduler(paper.diffusion, 150, 1.0, [])
    assert len(scheduler.timesteps) == 150 and scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 0


@pytest.mark.parametrize("name", sorted(set(PRESETS) - {"paper"}))  # paper: built above, too large to run here
def test_every_small_preset_builds_networks_whose_latents_fit_the_unet(name):
    preset = PRESETS[name]
    preset.validate()
    latent = preset.resolution // preset.autoencoder.downsampling
    autoencoder = build_autoencoder(preset.autoencoder, channels=1)
    unet = build_diffusion_unet(preset.diffusion, preset.autoencoder.latent_channels, num_classes=0)
    with torch.no_grad():
        z_mu, _ = autoencoder.encode(torch.zeros(1, 1, preset.resolution, preset.resolution))
        noise = unet(z_mu, timesteps=torch.tensor([5]))
        image = autoencoder.decode(z_mu)
    assert z_mu.shape == noise.shape == (1, preset.autoencoder.latent_channels, latent, latent)
    assert image.shape == (1, 1, preset.resolution, preset.resolution)


def test_ddim_noise_of_a_sample_depends_on_its_own_generator_only():
    settings = PRESETS["tiny"].diffusion
    output, sample = torch.randn(3, 8, 4, 4), torch.randn(3, 8, 4, 4)
    batch = SeededDDIMScheduler(settings, 10, 1.0, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    alone = SeededDDIMScheduler(settings, 10, 1.0, [torch.Generator().manual_seed(6)])
    t = batch.timesteps[3]
    together, _ = batch.step(output, t, sample)
    single, _ = alone.step(output[1:2], t, sample[1:2])
    torch.testing.assert_close(together[1:2], single)
    deterministic = SeededDDIMScheduler(settings, 10, 0.0, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    assert not torch.allclose(deterministic.step(output, t, sample)[0], together)
