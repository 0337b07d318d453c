"""Case identifiers that are safe in nnU-Net file names, and the mapping back to the source names."""

from __future__ import annotations

import re
from collections.abc import Iterable

_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


def safe_case_id(name: str) -> str:
    """``"benign (1)"`` -> ``"benign_1"``: runs of characters other than ASCII letters and digits become ``_``."""
    case_id = _UNSAFE.sub("_", name).strip("_")
    if not case_id:
        raise ValueError(f"{name!r} has no letter or digit to build a case id from")
    return case_id


def unique_case_ids(names: Iterable[str]) -> dict[str, str]:
    """Map each source name to a distinct safe case id; names that sanitise alike get ``_2``, ``_3``... in order."""
    assigned: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = candidate = safe_case_id(name)
        suffix = 2
        while candidate in taken:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(candidate)
        assigned[name] = candidate
    return assigned
