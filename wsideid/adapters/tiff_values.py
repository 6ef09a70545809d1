"""Binary TIFF tag values that are kept: each checked by its own rule (a field type and a
count are not enough when the count can be anything, or the bytes can be anything).

A catalog entry of a binary tag names its rule in `type`: `icc` (the profile is rebuilt from
its colour-defining tags, wsideid/icc.py), `colormap` (a palette, kept only for palette
images), `mcu_starts` (NDPI restart-marker offsets: increasing, inside the level's JPEG),
`chromaticity` and `reference_black_white` (numbers in their range: 48 bytes of rationals
could otherwise spell a name).
Any other kept binary tag must have a fixed count (tiff-tags.toml) or it is removed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import catalog, icc
from ..containers.tiff.reader import Ifd, Tag

PALETTE = 3          # PhotometricInterpretation: palette colour (TIFF 6.0 section 5)
MCU_STARTS, MCU_STARTS_HIGH = 65426, 65432


@dataclass
class Verdict:
    problem: str | None = None          # why the value cannot be kept (it is removed)
    data: bytes | None = None           # new bytes, when the rule rebuilt the value
    texts: list[str] = field(default_factory=list)   # text the rule took out (searched for)
    note: str = ""                      # what the rule did, for the report


def check(entry: catalog.Entry, tag: Tag, ifd: Ifd, bo: str) -> Verdict:
    """Whether a binary value can be kept as its entry's rule says."""
    rule = RULES.get(entry.type)
    if rule is not None:
        return rule(tag, ifd, bo)
    if entry.count in (None, "any"):
        return Verdict("an array of any length and content, with no rule for what it holds")
    return Verdict()


def _icc(tag: Tag, ifd: Ifd, bo: str) -> Verdict:
    try:
        cleaned = icc.clean(tag.data)
    except icc.IccError as exc:
        return Verdict(f"ICC profile refused: {exc}")
    # profile names (the sRGB description, say) are no secret and may be kept elsewhere
    # (Aperio's ICC Profile key); any other text of the profile must not survive anywhere
    texts = [t for t in cleaned.texts if not catalog.has_type(t, "icc_name")]
    note = (f"rebuilt from its colour-defining tags; {len(cleaned.dropped)} other tag(s) left out"
            if cleaned.data != tag.data else "")
    return Verdict(None, cleaned.data if cleaned.data != tag.data else None, texts, note)


def _colormap(tag: Tag, ifd: Ifd, bo: str) -> Verdict:
    if ifd.int_value(262, bo) != PALETTE:
        return Verdict("a palette in an image that is not palette colour (PhotometricInterpretation 3)")
    return Verdict()


def _mcu_starts(tag: Tag, ifd: Ifd, bo: str) -> Verdict:
    """NDPI: offsets of the restart intervals inside the level's one JPEG strip (65432 holds
    their high 32 bits in files over 4 GB): strictly increasing and inside the strip."""
    low = ifd.tags.get(MCU_STARTS)
    if low is None or 279 not in ifd.tags or ifd.tags[279].count != 1:
        return Verdict("MCU starts without the one strip they point into")
    starts = low.values(bo).astype(np.int64)
    high = ifd.tags.get(MCU_STARTS_HIGH)
    if high is not None:
        if high.count != low.count:
            return Verdict("high bytes of the MCU starts do not match them in number")
        starts = starts + (high.values(bo).astype(np.int64) << 32)
    length = int(ifd.tags[279].ints(bo)[0])
    if len(starts) and (starts[0] < 0 or (np.diff(starts) <= 0).any() or starts[-1] >= length):
        return Verdict("MCU starts are not increasing offsets inside the level's JPEG")
    return Verdict()


def _rationals(tag: Tag, bo: str) -> np.ndarray | None:
    """Numerators and denominators of a RATIONAL value (None for any other type)."""
    if tag.dtype != 5:
        return None
    return np.frombuffer(tag.data, dtype=np.dtype("u4").newbyteorder(bo)).astype(np.int64).reshape(-1, 2)


def _bounded(tag: Tag, bo: str, top: float, largest: int) -> Verdict:
    """Each value in [0, top], its numerator and denominator (or the integer) at most
    `largest`: text read as 32-bit numbers is far larger (0x20202020 and up)."""
    pairs = _rationals(tag, bo)
    if pairs is not None:
        num, den = pairs[:, 0], pairs[:, 1]
        if (den == 0).any() or (num > largest).any() or (den > largest).any() or (num > top * den).any():
            return Verdict("values out of their range (or text stored as numbers)")
        return Verdict()
    values = tag.values(bo).astype(np.float64)
    if (values < 0).any() or (values > top).any():
        return Verdict("values out of their range (or text stored as numbers)")
    return Verdict()


def _chromaticity(tag: Tag, ifd: Ifd, bo: str) -> Verdict:
    """White point, primaries, YCbCr coefficients: fractions between 0 and 1."""
    return _bounded(tag, bo, 1.0, 1 << 24)


def _reference_black_white(tag: Tag, ifd: Ifd, bo: str) -> Verdict:
    """Black and white reference codes of each component (TIFF 6.0 section 20): 0 to 65535."""
    return _bounded(tag, bo, 65535.0, 1 << 16)


RULES = {"icc": _icc, "colormap": _colormap, "mcu_starts": _mcu_starts,
         "chromaticity": _chromaticity, "reference_black_white": _reference_black_white}
