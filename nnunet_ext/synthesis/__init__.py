"""LDM synthesis of unlabeled images (``nnUNetv2_ext_synthesize``): Medfusion's latent diffusion model on MONAI blocks.

Modules, in pipeline order:

- :mod:`~nnunet_ext.synthesis.presets`: the ``tiny`` and ``paper`` settings (a config table);
- :mod:`~nnunet_ext.synthesis.source`: which dataset, configuration and fold cases; validation of the inputs;
- :mod:`~nnunet_ext.synthesis.images`: the fold's raw training images as model-resolution tensors and back;
- :mod:`~nnunet_ext.synthesis.models`: MONAI's AutoencoderKL, DiffusionModelUNet and schedulers, configured;
- :mod:`~nnunet_ext.synthesis.perceptual`: the optional LPIPS-VGG term, from a local weights file only;
- :mod:`~nnunet_ext.synthesis.training`: the two training stages with checkpoints and ``--resume``;
- :mod:`~nnunet_ext.synthesis.sampling`: DDIM sampling with one seed per image (independent of sharding);
- :mod:`~nnunet_ext.synthesis.memorisation`: nearest-training-image distances of the synthetic images;
- :mod:`~nnunet_ext.synthesis.writing`: images in the dataset's own format, provenance JSON, preview grid;
- :mod:`~nnunet_ext.synthesis.pipeline`: all of the above in order; :mod:`~nnunet_ext.synthesis.benchmark`.
"""
