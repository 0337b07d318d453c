"""Speed, size and memory measurements of every trainer's network (``nnUNetv2_ext_benchmark``)."""
