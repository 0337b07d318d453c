"""Pure ``nn.Module`` architectures (no nnU-Net imports); one architecture per module."""
