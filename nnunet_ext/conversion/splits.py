"""Re-splits of published semi-supervised protocols (GuidedNet's FLARE22 and AMOS splits).

A protocol split assigns labelled cases to train / val / test. The converters write the train and val cases to
imagesTr/labelsTr with ``splits_final.json = [{"train": train, "val": val}]`` (fold 0; nnU-Net's planner copies
it into nnUNet_preprocessed) and the test cases to imagesTs/labelsTs, plus ``<protocol>_protocol.json`` listing
every role. How this maps onto ``nnUNetv2_ext_ssl_split`` is stated per dataset in the README.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nnunet_ext.conversion.errors import SourceLayoutError


@dataclass
class ProtocolSplit:
    """Case ids per role; ``unlabeled`` are images without labels (imagesUl/)."""

    train: list[str]
    val: list[str]
    test: list[str]
    unlabeled: list[str] = field(default_factory=list)

    def splits_final(self) -> list[dict[str, list[str]]]:
        return [{"train": sorted(self.train), "val": sorted(self.val)}]

    def to_json(self, protocol: str, notes: str, seed: int | None) -> str:
        return json.dumps(
            {
                "protocol": protocol,
                "seed": seed,
                "notes": notes,
                "counts": {role: len(getattr(self, role)) for role in ("train", "val", "test", "unlabeled")},
                "train": sorted(self.train),
                "val": sorted(self.val),
                "test": sorted(self.test),
                "unlabeled": sorted(self.unlabeled),
            },
            indent=2,
        )


def parse_counts(text: str) -> tuple[int, int, int]:
    """``"180,60,60"`` -> (train, val, test); a ValueError in plain words otherwise."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected three positive counts train,val,test such as 180,60,60, got {text!r}") from None
    if len(counts) != 3 or min(counts) < 1:
        raise ValueError(f"expected three positive counts train,val,test, got {text!r}")
    return counts


def random_partition(case_ids: Sequence[str], counts: Sequence[int], seed: int) -> tuple[list[str], ...]:
    """The first ``sum(counts)`` of ``case_ids`` shuffled with ``RandomState(seed)`` and cut into ``counts`` parts."""
    needed = sum(counts)
    if len(case_ids) < needed:
        raise SourceLayoutError(
            f"the protocol needs {needed} labelled cases ({counts}), the source has {len(case_ids)}"
        )
    chosen = np.array(list(case_ids)[:needed])
    np.random.RandomState(seed).shuffle(chosen)
    bounds = np.cumsum([0, *counts])
    return tuple(sorted(chosen[start:stop].tolist()) for start, stop in itertools.pairwise(bounds))
