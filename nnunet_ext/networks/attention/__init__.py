"""Attention modules shared by the transformer networks."""
