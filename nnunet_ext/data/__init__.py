"""Datasets nnunet_ext generates itself (the synthetic toy dataset for tests and the demo)."""
