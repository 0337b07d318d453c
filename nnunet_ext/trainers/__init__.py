"""nnU-Net trainer subclasses; each registered by name in :mod:`nnunet_ext.registration`."""
