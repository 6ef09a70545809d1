"""Find and blank the label area of an overview (macro) photograph of a glass slide.

Where the label is comes from three sources, all united:
- decoded barcodes (their boxes with a margin);
- boxes the caller knows from the scanner's metadata (e.g. NDPI's barcode region);
- the picture itself. A slide photographed lengthwise has its label at one end, sometimes at
  both. Along the long axis, each column (row, for an upright slide) is summed up by its median
  brightness, its share of strong edges and its median colour saturation. The middle of the
  slide holds glass and tissue; its least coloured, least edged piece is taken as the glass
  (tissue may cover the very centre). A label end differs from glass: paper is brighter than
  glass in reflected light and dark in transmitted light, printing and handwriting make edges,
  and coloured labels are saturated. A band that starts at an end, runs inward while columns
  keep differing (short gaps allowed) and is long enough to be a label is taken as one.

Boxes are (x0, y0, x1, y1) pixels with exclusive ends, as in `barcodes.Box`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .barcodes import Barcode, Box, decode_all, grow, scharr, to_grey

REFERENCE_SPAN = (0.25, 0.75)  # the part of the long axis where the glass reference is sought
REFERENCE_PIECES = 6         # in this many pieces, the smoothest of which is taken
LEVEL_TOLERANCE = 20.0       # grey levels (of 255) a column's median may differ from glass
EDGE_TOLERANCE = 0.06        # extra share of strong-edge pixels over glass
SATURATION_TOLERANCE = 0.15  # difference in median saturation (0..1)
SPREAD_FACTOR = 3.0          # tolerances widen to this many median absolute deviations of glass
STRONG_EDGE = 0.2            # an edge is strong above this share of the image's contrast
START_SLACK = 0.03           # a band may begin this share of the long axis inside the end
GAP = 0.02                   # columns like glass for this share of the long axis end no band
MIN_BAND = 0.35              # a label band is at least this share of the short axis long
MAX_BAND = 0.45              # and at most this share of the long axis
BAND_MARGIN = 0.01           # bands are widened inward by this share of the long axis
BARCODE_MARGIN = 0.25        # decoded codes are widened by this share of their size
SAMPLE_LONG_SIDE = 1024      # larger images are measured on a strided sample


class OverviewNotCleared(RuntimeError):
    """Barcodes still decode after blanking."""


@dataclass(frozen=True)
class Band:
    end: str        # "left", "right", "top" or "bottom"
    box: Box
    capped: bool    # the band ran on past MAX_BAND and was cut there


# ---------------------------------------------------------------- boxes

def box_from_fractions(region: Sequence[float], shape: tuple[int, ...]) -> Box:
    """(x0, y0, x1, y1) given as fractions 0..1 of the image, as pixels (rounded outward)."""
    x0, y0, x1, y1 = region
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"region {tuple(region)} is not (x0, y0, x1, y1) within 0..1")
    height, width = shape[:2]
    return (int(np.floor(x0 * width)), int(np.floor(y0 * height)),
            int(np.ceil(x1 * width)), int(np.ceil(y1 * height)))


def box_as_fractions(box: Box, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    height, width = shape[:2]
    x0, y0, x1, y1 = box
    return (x0 / width, y0 / height, x1 / width, y1 / height)


def clip_box(box: Sequence[int], shape: tuple[int, ...]) -> Box | None:
    height, width = shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


# ---------------------------------------------------------------- the picture itself

@dataclass(frozen=True)
class Profiles:
    """Per position along the long axis (after sampling): features of that column."""
    level: np.ndarray
    edges: np.ndarray
    saturation: np.ndarray
    step: int          # pixels of the image per profile position
    length: int        # the image's long side in pixels
    breadth: int       # the image's short side in pixels
    lengthwise_x: bool  # the long axis is x (a landscape image)


def long_axis_profiles(pixels: np.ndarray) -> Profiles:
    a = np.asarray(pixels)
    height, width = a.shape[:2]
    step = max(1, int(np.ceil(max(height, width) / SAMPLE_LONG_SIDE)))
    sample = a[::step, ::step]
    grey = to_grey(sample).astype(np.float32)
    saturation = _saturation(sample)
    lengthwise_x = width >= height
    if not lengthwise_x:  # always measure along axis 1
        grey, saturation = grey.T, saturation.T
    lo, hi = np.percentile(grey, (2, 98))
    strong = STRONG_EDGE * max(float(hi - lo), 32.0)
    gx, gy = scharr(grey)
    edges = (np.hypot(gx, gy) > strong).mean(axis=0)
    window = max(3, grey.shape[1] // 100)
    return Profiles(_smooth(np.median(grey, axis=0), window), _smooth(edges, window),
                    _smooth(np.median(saturation, axis=0), window), step,
                    max(height, width), min(height, width), lengthwise_x)


def _saturation(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2 or a.shape[2] < 3:
        return np.zeros(a.shape[:2], np.float32)
    rgb = a[:, :, :3].astype(np.float32)
    top = rgb.max(axis=2)
    return (top - rgb.min(axis=2)) / np.maximum(top, 1e-6)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    padded = np.pad(values.astype(np.float64), window // 2, mode="edge")
    kernel = np.ones(window) / window
    return np.convolve(padded, kernel, mode="valid")[:values.size]


def glass_reference(profiles: Profiles) -> slice:
    """The stretch of the slide's middle that looks most like bare glass: of equal pieces of
    the REFERENCE_SPAN, the one with the least colour and the fewest strong edges (stained
    tissue is coloured, unstained tissue and debris make edges). Tissue can cover the very
    middle, and then it must not serve as the reference."""
    n = profiles.level.size
    start, stop = int(n * REFERENCE_SPAN[0]), max(int(n * REFERENCE_SPAN[1]), 1)
    bounds = np.linspace(start, stop, REFERENCE_PIECES + 1).astype(int)
    pieces = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if not pieces:
        return slice(0, n)
    return min(pieces, key=lambda piece: float(profiles.saturation[piece].mean()
                                               + profiles.edges[piece].mean()))


def label_like(profiles: Profiles) -> np.ndarray:
    """Per position: does this column differ from the glass in the middle of the slide?"""
    glass = glass_reference(profiles)
    deviation = np.zeros(profiles.level.size)
    for values, tolerance, both_ways in (
            (profiles.level, LEVEL_TOLERANCE, True),
            (profiles.edges, EDGE_TOLERANCE, False),  # fewer edges than glass is no sign
            (profiles.saturation, SATURATION_TOLERANCE, True)):
        reference = np.median(values[glass])
        spread = np.median(np.abs(values[glass] - reference))
        difference = values - reference
        if both_ways:
            difference = np.abs(difference)
        deviation = np.maximum(deviation, difference / max(tolerance, SPREAD_FACTOR * spread))
    return deviation >= 1


def _band_length(like: np.ndarray, profiles: Profiles) -> tuple[int, bool] | None:
    """Positions from index 0 that form a label band, and whether it was capped."""
    n = like.size
    scale = profiles.step
    slack = max(1, int(START_SLACK * profiles.length / scale))
    gap = max(1, int(GAP * profiles.length / scale))
    if not like[:slack].any():
        return None
    last = int(np.argmax(like))
    for i in range(last, n):
        if like[i]:
            last = i
        elif i - last > gap:
            break
    length = last + 1
    if length * scale < MIN_BAND * profiles.breadth:
        return None
    cap = int(MAX_BAND * n)
    return (min(length, cap), length > cap)


def label_bands(pixels: np.ndarray) -> list[Band]:
    """The label band(s) at the ends of an overview, from the picture alone."""
    profiles = long_axis_profiles(pixels)
    like = label_like(profiles)
    height, width = np.asarray(pixels).shape[:2]
    margin = max(2, int(BAND_MARGIN * profiles.length))
    bands = []
    for from_start in (True, False):
        found = _band_length(like if from_start else like[::-1], profiles)
        if found is None:
            continue
        positions, capped = found
        extent = min(profiles.length, positions * profiles.step + margin)
        start, stop = (0, extent) if from_start else (profiles.length - extent, profiles.length)
        if profiles.lengthwise_x:
            bands.append(Band("left" if from_start else "right", (start, 0, stop, height), capped))
        else:
            bands.append(Band("top" if from_start else "bottom", (0, start, width, stop), capped))
    return bands


# ---------------------------------------------------------------- all sources together

def barcode_boxes(barcodes: Iterable[Barcode], shape: tuple[int, ...]) -> list[Box]:
    return [grow(code.box, BARCODE_MARGIN, shape[:2], at_least=4) for code in barcodes]


def find_label_area(pixels: np.ndarray, barcodes: Iterable[Barcode] = (),
                    vendor_boxes: Iterable[Sequence[int]] = ()) -> list[Box]:
    """Boxes to blank: every barcode's box with a margin, the caller's vendor boxes, and the
    label band(s) the picture shows."""
    shape = np.asarray(pixels).shape
    boxes = barcode_boxes(barcodes, shape)
    boxes += [b for b in (clip_box(v, shape) for v in vendor_boxes) if b is not None]
    boxes += [band.box for band in label_bands(pixels)]
    return _distinct(boxes)


def _distinct(boxes: list[Box]) -> list[Box]:
    """Without boxes that lie inside another one."""
    kept = []
    for i, box in enumerate(boxes):
        inside = any(j != i and _contains(other, box) and (other != box or j < i)
                     for j, other in enumerate(boxes))
        if not inside:
            kept.append(box)
    return kept


def _contains(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and \
        outer[2] >= inner[2] and outer[3] >= inner[3]


def blank(pixels: np.ndarray, boxes: Iterable[Box], fill: int | float | Sequence[float]
          ) -> np.ndarray:
    """A copy with every box set to `fill` (one value, or one per channel)."""
    out = np.array(pixels, copy=True)
    value = np.asarray(fill, dtype=out.dtype)
    channels = out.shape[2] if out.ndim == 3 else 1
    if value.ndim > 1 or (value.ndim == 1 and value.size not in (1, channels)):
        raise ValueError(f"fill {fill!r} does not fit an image with {channels} channel(s)")
    if out.ndim == 2 and value.ndim == 1:
        value = value[0]
    for box in boxes:
        x0, y0, x1, y1 = box
        out[y0:y1, x0:x1] = value
    return out


def neutral_fill(pixels: np.ndarray, boxes: Iterable[Box]) -> np.ndarray:
    """The median colour of what stays, so that blanked areas look like the glass."""
    a = np.asarray(pixels)
    keep = np.ones(a.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        keep[y0:y1, x0:x1] = False
    step = max(1, int(np.ceil(max(a.shape[:2]) / SAMPLE_LONG_SIDE)))
    rest = a[::step, ::step][keep[::step, ::step]]
    if rest.size == 0:
        return np.asarray(np.iinfo(a.dtype).max if a.dtype.kind in "ui" else 1, a.dtype)
    return np.median(rest, axis=0).astype(a.dtype)


def redact_overview(pixels: np.ndarray, region: Sequence[float] | None = None,
                    barcodes: Iterable[Barcode] | None = None,
                    vendor_boxes: Iterable[Sequence[int]] = (),
                    fill: int | float | Sequence[float] | None = None
                    ) -> tuple[np.ndarray, list[Box], str]:
    """The overview with its label area blanked, the boxes blanked, and why.

    `region`, fractions (x0, y0, x1, y1) of the image, overrides the search of the picture;
    barcodes (decoded here unless given) and vendor boxes are blanked in any case. Blanked
    areas take `fill`, by default the median colour of the rest. Raises OverviewNotCleared if
    a barcode still decodes afterwards."""
    a = np.asarray(pixels)
    codes = decode_all(a) if barcodes is None else list(barcodes)
    boxes, reasons = _planned(a, region, codes, vendor_boxes)
    out = blank(a, boxes, _fill(a, boxes, fill))
    left = decode_all(out)
    if left:  # codes that the first look (or the caller's list) missed
        boxes = _distinct(boxes + barcode_boxes(left, a.shape))
        reasons.append(f"{len(left)} more barcode(s) found after blanking")
        out = blank(a, boxes, _fill(a, boxes, fill))
        if decode_all(out):
            raise OverviewNotCleared("barcodes still decode after blanking the overview")
    if not boxes:
        return out, [], "no label area found: no barcode, no label band at either end"
    return out, boxes, "; ".join(reasons)


def _planned(a: np.ndarray, region: Sequence[float] | None, codes: list[Barcode],
             vendor_boxes: Iterable[Sequence[int]]) -> tuple[list[Box], list[str]]:
    """The boxes to blank before checking, and a reason for each kind."""
    shape = a.shape
    vendor = [b for b in (clip_box(v, shape) for v in vendor_boxes) if b is not None]
    boxes = barcode_boxes(codes, shape) + vendor
    reasons = []
    if codes:
        symbologies = ", ".join(sorted({code.symbology for code in codes}))
        reasons.append(f"{len(codes)} barcode(s): {symbologies}")
    if vendor:
        reasons.append(f"{len(vendor)} box(es) from the scanner's metadata")
    if region is not None:
        boxes.append(box_from_fractions(region, shape))
        reasons.append("region given " + _fractions_text(boxes[-1], shape))
    else:
        bands = label_bands(a)
        boxes += [band.box for band in bands]
        reasons += [f"label band at the {band.end} end " + _fractions_text(band.box, shape)
                    + (" (cut at the longest a label can be)" if band.capped else "")
                    for band in bands]
    return _distinct(boxes), reasons


def _fill(pixels: np.ndarray, boxes: list[Box], fill) -> np.ndarray:
    return neutral_fill(pixels, boxes) if fill is None else np.asarray(fill)


def _fractions_text(box: Box, shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in box_as_fractions(box, shape)) + ")"


# ---------------------------------------------------------------- NDPI geometry

_ROI = re.compile(r"^\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*$")


def ndpi_barcode_boxes(properties: Mapping[str, str], shape: tuple[int, ...]) -> list[Box]:
    """NDPI's barcode region (`roi.barcode.macro`) in macro pixels, read through the slide
    region (`roi.slide.macro`) that the macro image shows: the direct mapping, then the same
    turned by 180 degrees. Both are returned because the one sample seen (a NanoZoomer
    C9600-12 macro) has its label where the turned box lies, not the direct one; which
    applies is for the caller (or `ndpi_label_box`) to decide."""
    slide, code = (_ROI.match(properties.get(key, "")) for key in
                   ("roi.slide.macro", "roi.barcode.macro"))
    if slide is None or code is None:
        return []
    sx0, sy0, _, _ = (int(v) for v in slide.groups())
    cx0, cy0, cx1, cy1 = (int(v) for v in code.groups())
    height, width = shape[:2]
    direct = (cx0 - sx0, cy0 - sy0, cx1 - sx0, cy1 - sy0)
    turned = (width - direct[2], height - direct[3], width - direct[0], height - direct[1])
    return [b for b in (clip_box(direct, shape), clip_box(turned, shape)) if b is not None]


def ndpi_label_box(properties: Mapping[str, str], pixels: np.ndarray) -> list[Box]:
    """Of `ndpi_barcode_boxes`, the one that overlaps the label band the picture shows the
    most; both when the picture shows no band or cannot tell them apart."""
    shape = np.asarray(pixels).shape
    candidates = ndpi_barcode_boxes(properties, shape)
    bands = [band.box for band in label_bands(pixels)]
    if len(candidates) < 2 or not bands:
        return candidates
    overlaps = [sum(_overlap(c, b) for b in bands) for c in candidates]
    if overlaps[0] == overlaps[1]:
        return candidates
    return [candidates[int(np.argmax(overlaps))]]


def _overlap(a: Box, b: Box) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)
