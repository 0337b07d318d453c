"""Turning source masks into nnU-Net label maps (consecutive ids, 0 = background, uint8).

Three decoders for 2-D masks, all ``decoder(mask, path) -> (H, W) uint8``:

- :class:`BinaryMask`: 0/255 (or 0/1) lesion masks, with robust thresholding (JPEG noise, stray 1/254 values);
- :class:`ValueMap`: gray-level or palette-index masks (``0/1/2``, ``0/128/255``) through an explicit table;
- :class:`ColourMap`: RGB masks through an explicit colour table.

``parse_label_map`` reads the ``--label-map`` syntax shared by the command lines. For 3-D label volumes,
:func:`remap_lut` builds a lookup table that renumbers (and drops) source labels and
:func:`check_label_values` rejects values outside the label table.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_ext.conversion.errors import UnexpectedLabelError

Colour = tuple[int, int, int]


def _as_gray(mask: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` -> ``(H, W)`` by the channel maximum (a red-on-black mask is foreground); 2-D unchanged."""
    return mask.max(axis=-1) if mask.ndim == 3 else mask


@dataclass(frozen=True)
class BinaryMask:
    """Foreground/background masks -> {0, 1}.

    Rule (per file): values within {0, 1} are taken as they are; otherwise pixels above ``threshold`` are
    foreground (0/255 masks, including JPEG ringing and stray 1/254 values). A mask whose maximum lies in
    2..threshold is neither 0/1 nor 0/255 (a multi-class or dimmed mask) and raises
    :class:`UnexpectedLabelError` instead of silently becoming empty; ``hint`` ends that message (what to do: the
    converters with ``--label-map`` point to it). Colour masks use the channel maximum.
    """

    name: str = "foreground"
    threshold: int = 127
    hint: str = "a multi-class mask needs --label-map"

    @property
    def labels(self) -> dict[str, int]:
        return {"background": 0, self.name: 1}

    def __call__(self, mask: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        gray = _as_gray(mask)
        maximum = int(gray.max()) if gray.size else 0
        if maximum <= 1:
            return gray.astype(np.uint8)
        if maximum <= self.threshold:
            raise UnexpectedLabelError(
                path,
                f"values {_value_summary(gray)} are neither 0/1 nor 0/255: {self.hint}",
            )
        return (gray > self.threshold).astype(np.uint8)


@dataclass(frozen=True)
class _TableMap(ABC):
    """``entries[name] = source values`` -> label ids 0, 1, 2... in the order of ``entries``.

    ``tolerance`` assigns a pixel to the nearest entry within that distance (max over channels; for JPEG
    masks); any other value raises :class:`UnexpectedLabelError`.
    """

    entries: Mapping[str, Sequence]
    tolerance: int = 0

    @property
    def labels(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.entries)}

    @abstractmethod
    def _pixels(self, mask: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        """``(H, W, C)`` int64 pixels comparable with the entries."""

    def __call__(self, mask: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        table = [(value, label) for label, name in enumerate(self.entries) for value in self.entries[name]]
        return _nearest(self._pixels(mask, path), table, self.tolerance, path)


class ValueMap(_TableMap):
    """Gray-level / palette-index masks; entries are single values (colour masks with R = G = B read as gray)."""

    def _pixels(self, mask: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        if mask.ndim == 3:
            if not (np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 1], mask[..., 2])):
                raise UnexpectedLabelError(path, "colour mask given to a gray-value label map (use R,G,B entries)")
            mask = mask[..., 0]
        return mask.astype(np.int64)[..., None]


class ColourMap(_TableMap):
    """RGB masks; entries are ``(r, g, b)`` colours (gray masks read as v,v,v)."""

    def _pixels(self, mask: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        return (np.repeat(mask[..., None], 3, axis=-1) if mask.ndim == 2 else mask).astype(np.int64)


def _nearest(pixels: np.ndarray, table: list, tolerance: int, path) -> np.ndarray:
    """Label of the nearest table entry (max-abs distance over channels) within ``tolerance``; else raise."""
    best_distance = np.full(pixels.shape[:2], np.iinfo(np.int64).max)
    labels = np.zeros(pixels.shape[:2], dtype=np.uint8)
    for value, label in table:
        distance = np.abs(pixels - np.asarray(value, dtype=np.int64).reshape(-1)).max(axis=-1)
        closer = distance < best_distance
        best_distance[closer] = distance[closer]
        labels[closer] = label
    unmatched = best_distance > tolerance
    if unmatched.any():
        found = pixels[unmatched]
        examples = sorted({tuple(int(v) for v in row) if len(row) > 1 else int(row[0]) for row in found[:10000]})
        raise UnexpectedLabelError(
            path, f"{int(unmatched.sum())} pixels with values outside the label map, e.g. {examples[:8]}"
        )
    return labels


def _value_summary(array: np.ndarray, limit: int = 8) -> str:
    values = np.unique(array)
    text = ", ".join(str(int(v)) for v in values[:limit])
    return "{" + text + (", ..." if len(values) > limit else "") + "}"


def parse_label_map(spec: str, tolerance: int = 0) -> ValueMap | ColourMap:
    """Parse ``--label-map``.

    Inline: ``"background=0;edema=128;hole=255"`` (gray values / palette indices) or
    ``"background=0,0,0;edema=255,0,0;hole=0,0,255"`` (colours); ``|`` separates alternatives
    (``"hole=2|255"``). A path to a ``.json`` file holding ``{"name": value | [r, g, b] | [alternatives]}``
    works too. Label ids follow the order given; the first entry must be ``background``. Entries must be all
    gray values or all colours, each value 0..255 (what an 8-bit mask holds); a name or a value may appear once.

    Raises:
        ValueError: naming the entry (or the JSON file) that breaks these rules.
    """
    if spec.endswith(".json"):
        entries = _label_map_file(Path(spec))
    else:
        entries = {}
        for item in filter(None, (part.strip() for part in spec.split(";"))):
            name, separator, values = item.partition("=")
            name = name.strip()
            if not separator or not name:
                raise ValueError(f"label map entry {item!r} is not name=value")
            if name in entries:
                raise ValueError(f"label {name!r} is given twice; list its values as alternatives: '{name}=A|B'")
            try:
                entries[name] = [tuple(int(v) for v in alt.split(",")) for alt in values.split("|")]
            except ValueError:
                raise ValueError(f"label map entry {item!r}: values must be integers") from None
    if not entries or next(iter(entries)) != "background":
        raise ValueError(f"the label map must start with 'background', got {list(entries)}")
    _check_values(entries)
    sizes = {len(value) for alternatives in entries.values() for value in alternatives}
    if sizes == {1}:
        return ValueMap({name: [v[0] for v in alts] for name, alts in entries.items()}, tolerance)
    if sizes == {3}:
        return ColourMap({name: [tuple(v) for v in alts] for name, alts in entries.items()}, tolerance)
    raise ValueError(f"label map entries must be all single values or all R,G,B colours: {spec!r}")


def _label_map_file(path: Path) -> dict[str, list[tuple[int, ...]]]:
    """The entries of a ``.json`` label map file (``json`` keeps the last of two equal names, so they are checked)."""

    def unique_names(pairs: list[tuple[str, object]]) -> dict:
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"label map file {path}: label(s) {repeated} given twice")
        return dict(pairs)

    if not path.is_file():
        raise ValueError(f"label map file {path} not found")
    try:
        raw = json.loads(path.read_text(), object_pairs_hook=unique_names)
        return {name: _json_alternatives(value) for name, value in raw.items()}
    except (OSError, AttributeError, TypeError) as error:
        raise ValueError(f"label map file {path}: expected {{name: value | [r, g, b] | [alternatives]}}") from error
    except ValueError as error:
        raise ValueError(f"label map file {path}: {error}") from error


def _check_values(entries: dict[str, list[tuple[int, ...]]]) -> None:
    """Every value 0..255 and no value (or colour) listed for two labels."""
    owner: dict[tuple[int, ...], str] = {}
    for name, alternatives in entries.items():
        for value in alternatives:
            if not all(isinstance(v, int) and 0 <= v <= 255 for v in value):
                shown = ",".join(map(str, value))
                raise ValueError(f"label {name!r}: value {shown} is not 0..255, which an 8-bit mask cannot hold")
            if value in owner and owner[value] != name:
                raise ValueError(f"value {','.join(map(str, value))} is given for both {owner[value]!r} and {name!r}")
            owner[value] = name


def _json_alternatives(value) -> list[tuple[int, ...]]:
    if isinstance(value, int):
        return [(value,)]
    if value and all(isinstance(v, int) for v in value):
        return [tuple(value)] if len(value) == 3 else [(v,) for v in value]
    return [tuple(v) if isinstance(v, list) else (v,) for v in value]


def remap_lut(mapping: Mapping[int, int], max_source: int) -> np.ndarray:
    """Lookup table ``lut[source] = target`` of length ``max_source + 1`` (unlisted sources -> 0)."""
    lut = np.zeros(max_source + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lut[source] = target
    return lut


def check_label_values(label: np.ndarray, allowed: Sequence[int] | frozenset[int], path) -> None:
    """Raise :class:`UnexpectedLabelError` unless every voxel is an integer in ``allowed``."""
    values = np.unique(label)
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
        raise UnexpectedLabelError(path, f"non-integer label values, e.g. {values[values != np.round(values)][:5]}")
    unexpected = sorted(set(values.astype(np.int64).tolist()) - set(allowed))
    if unexpected:
        raise UnexpectedLabelError(path, f"values {unexpected[:10]} not in the label table {sorted(allowed)}")


MaskLabels = BinaryMask | ValueMap | ColourMap
"""Any 2-D mask decoder; ``.labels`` gives nnU-Net's ``{name: id}`` table."""
