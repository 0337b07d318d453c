"""How a benchmarked train step runs (imports no torch, so that ``nnUNetv2_ext_benchmark --help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StepMode:
    """How the train step runs: ``torch.compile``-d networks (inductor) and/or autocast to ``amp`` (``"float16"``
    with a GradScaler, or ``"bfloat16"``); the default is eager float32 (on CUDA nnU-Net's own float16 autocast)."""

    compile: bool = False
    amp: str | None = None

    @property
    def name(self) -> str:
        return "+".join(["compiled" if self.compile else "eager", *([self.amp] if self.amp else [])])

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return getattr(torch, self.amp) if self.amp else None


EAGER = StepMode()
