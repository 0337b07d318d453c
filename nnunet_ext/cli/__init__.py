"""Console scripts (``nnUNetv2_ext_<verb>``)."""
