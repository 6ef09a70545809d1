"""Find and decode every barcode (1D and 2D) in a label, overview or thumbnail image.

`decode_all` works in stages and stops as soon as nothing code-like is left unexplained:

1. Plain pass over the whole image: zxing-cpp (every format it reads, in the four right-angle
   orientations, inverted too), then zbar through pyzbar when it can be loaded. Always run.
2. Where could codes still hide? Blocks dense with strong edges (relative to the image's own
   contrast and noise), grouped into regions. Regions that decoded codes cover are explained;
   if codes were found and no region is left unexplained, the search ends here. Text and tissue
   look code-like too, so the stages below are bounded, not exhaustive.
3. The whole image contrast-stretched (and scaled up when small), read by zxing-cpp with its
   local and its global binariser and by zbar. Also run whenever nothing was found so far: a
   faint code can stay below the edge threshold of stage 2.
4. Skewed 1D codes and PDF417: their bars make a region's gradients point one way. Each such
   region is cropped and turned by its own measured angle so that the bars stand upright. (The
   2D matrix detectors of zxing-cpp find their symbols at any angle and need no turning.)
5. Small regions, cropped, stretched and scaled up: codes with modules of one or two pixels.

Boxes are in the coordinates of the input image, whatever was done to find them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zxingcpp
from PIL import Image, ImageFilter

try:
    from pyzbar import pyzbar as _pyzbar
    _pyzbar.decode((bytes(64), 8, 8))  # pyzbar loads libzbar on first use: fail here, not later
    PYZBAR_AVAILABLE = True
except (ImportError, OSError):  # no pyzbar, or no libzbar for it to load
    _pyzbar = None
    PYZBAR_AVAILABLE = False

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels; x1 and y1 are exclusive, as in pixels[y0:y1, x0:x1]."""


@dataclass(frozen=True)
class Barcode:
    symbology: str  # zxing-cpp's format name: "DataMatrix", "QRCode", "Code128", "PDF417", ...
    value: str
    box: Box


# zbar's symbol names mapped onto zxing-cpp's format names, so that duplicates merge. Not asked
# of zbar: PDF417 (its decoder is incomplete), the EAN add-ons (noise) and DataBar (its decoder
# prints assertion warnings on ordinary images; zxing-cpp reads DataBar).
ZBAR_SYMBOLOGY = {
    "QRCODE": "QRCode", "CODE128": "Code128", "CODE39": "Code39", "CODE93": "Code93",
    "EAN13": "EAN13", "EAN8": "EAN8", "UPCA": "UPCA", "UPCE": "UPCE", "ISBN10": "ISBN",
    "ISBN13": "ISBN", "I25": "ITF", "CODABAR": "Codabar",
}
ZBAR_SYMBOLS = [s for s in _pyzbar.ZBarSymbol if s.name in ZBAR_SYMBOLOGY] if _pyzbar else []

SKEW_FORMATS = (zxingcpp.BarcodeFormat.LinearCodes, zxingcpp.BarcodeFormat.PDF417,
                zxingcpp.BarcodeFormat.MicroPDF417)

WORK_MAX_SIDE = 2048        # zbar and the later stages see larger images scaled down to this
BLOCK_TARGET = 160          # grid blocks along the long side for locating code-like areas
STRONG_EDGE = 0.2           # an edge is strong above this share of the image's contrast,
NOISE_FACTOR = 4.0          # above this many noise deviations of the gradient,
MIN_EDGE = 8.0              # and above this many grey levels
DENSE = 0.10                # a block with this share of strong-edge pixels is code-like
COHERENT = 0.8              # gradients this aligned (0..1) in a block look like bars
SAME_ANGLE = 12.0           # neighbouring bar blocks within this many degrees are one region
NEAR_AXIS = 4.0             # bars within this many degrees of upright need no turning
ENHANCED_MAX_PIXELS = 600_000   # small images are scaled up 1.5-2x towards this for stage 3
MAX_SKEWED, MAX_SMALL = 6, 6    # crops tried per image in stages 4 and 5, largest first
SMALL_SHARE = 0.05          # a region below this share of the image counts as small
SMALL_TARGET_SIDE = 360     # small regions are scaled up towards this long side


# ---------------------------------------------------------------- image preparation

def to_grey(pixels: np.ndarray) -> np.ndarray:
    """Any grey/RGB/RGBA (or grey+alpha) image of integers or floats as contiguous uint8 grey;
    transparent pixels count as white."""
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"not an image array: shape {a.shape}")
    top = _full_scale(a)
    a = a.astype(np.float32)
    if a.ndim == 3:
        has_alpha = a.shape[2] in (2, 4)
        colour = a[:, :, :-1] if has_alpha else a
        grey = colour[:, :, 0] if colour.shape[2] == 1 else \
            colour @ np.array([0.299, 0.587, 0.114], np.float32)
        if has_alpha:
            alpha = a[:, :, -1] / top
            grey = grey * alpha + top * (1 - alpha)
        a = grey
    return np.ascontiguousarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8))


def _full_scale(a: np.ndarray) -> float:
    """The value that means white: 255 for uint8, the data's own maximum for wider types (a
    12-bit image in uint16 would otherwise come out nearly black)."""
    if a.dtype == np.uint8:
        return 255.0
    if a.dtype == np.bool_:
        return 1.0
    peak = float(a.max()) if a.size else 1.0
    if np.issubdtype(a.dtype, np.floating) and peak <= 1.0:
        return 1.0
    return max(peak, 1.0)


def stretch(grey: np.ndarray, percentiles: tuple[float, float] = (1, 99)) -> np.ndarray:
    """Contrast stretched so that the given percentiles span 0..255 (the image itself when
    they are less than a grey level apart)."""
    lo, hi = np.percentile(grey, percentiles)
    if hi - lo < 1:
        return grey
    out = (grey.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).astype(np.uint8)


def faint_stretch(grey: np.ndarray) -> np.ndarray | None:
    """The image median-filtered over 3 x 3 pixels, then stretched so that its 0.01st..99.99th
    percentiles span 0..255: a code a few grey levels from its ground that covers less than
    1% of the image (where `stretch` sees only ground), under sensor noise (which the
    median takes out without blurring the code's edges). None for an image of one grey
    level."""
    smooth = np.asarray(Image.fromarray(grey).filter(ImageFilter.MedianFilter(3)))
    stretched = stretch(smooth, (0.01, 99.99))
    return None if stretched is smooth else stretched


# ---------------------------------------------------------------- coordinates

class Variant:
    """An image prepared for a decoder, with the affine map (3x3) from its pixel coordinates
    back to the input image's."""

    def __init__(self, image: np.ndarray, to_input: np.ndarray):
        self.image = np.ascontiguousarray(image)
        self.to_input = to_input

    def box_of(self, points: list[tuple[float, float]], shape: tuple[int, int]) -> Box:
        """The input-image box around these points of this variant, clipped to `shape`."""
        xy = np.array([[x, y, 1.0] for x, y in points]).T
        mapped = (self.to_input @ xy)[:2]
        height, width = shape
        x0, y0 = np.floor(mapped.min(axis=1)).astype(int)
        x1, y1 = np.ceil(mapped.max(axis=1)).astype(int) + 1
        return (max(0, int(x0)), max(0, int(y0)), min(width, int(x1)), min(height, int(y1)))

    def region_box(self, region: Box, shape: tuple[int, int]) -> Box:
        x0, y0, x1, y1 = region
        return self.box_of([(x0, y0), (x1 - 1, y1 - 1)], shape)


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)


def scaled(variant: Variant, factor: float) -> Variant:
    if factor == 1:
        return variant
    height, width = variant.image.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resample = Image.Resampling.BILINEAR if factor > 1 else Image.Resampling.BOX
    image = np.asarray(Image.fromarray(variant.image).resize(size, resample))
    return Variant(image, variant.to_input @ np.diag([width / size[0], height / size[1], 1.0]))


def rotated(variant: Variant, degrees: float) -> Variant:
    """Turned by `degrees` (counter-clockwise as seen) about its centre onto a canvas that
    holds all of it; the corners are filled with the image's light side, not black, so that
    they add no edges of their own."""
    height, width = variant.image.shape
    turn = np.deg2rad(degrees)
    cos, sin = np.cos(turn), np.sin(turn)
    out_w = int(np.ceil(abs(width * cos) + abs(height * sin)))
    out_h = int(np.ceil(abs(width * sin) + abs(height * cos)))
    # output pixel -> source pixel: from the output centre, turn back, onto the source centre
    back = _shift(width / 2, height / 2) @ np.array(
        [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]) @ _shift(-out_w / 2, -out_h / 2)
    light = int(np.percentile(variant.image, 90))
    image = Image.fromarray(variant.image).transform(
        (out_w, out_h), Image.Transform.AFFINE, tuple(back[:2].ravel()),
        resample=Image.Resampling.BILINEAR, fillcolor=light)
    return Variant(np.asarray(image), variant.to_input @ back)


def cropped(variant: Variant, box: Box) -> Variant:
    x0, y0, x1, y1 = box
    return Variant(variant.image[y0:y1, x0:x1], variant.to_input @ _shift(x0, y0))


# ---------------------------------------------------------------- decoders

def read_zxing(variant: Variant, shape: tuple[int, int], formats=(),
               binarizer=zxingcpp.Binarizer.LocalAverage) -> list[Barcode]:
    found = []
    for hit in zxingcpp.read_barcodes(variant.image, formats=formats, binarizer=binarizer,
                                      text_mode=zxingcpp.TextMode.Plain):
        pos = hit.position
        corners = [(p.x, p.y) for p in (pos.top_left, pos.top_right, pos.bottom_right,
                                        pos.bottom_left)]
        found.append(Barcode(hit.format.name, hit.text, variant.box_of(corners, shape)))
    return found


def read_zbar(variant: Variant, shape: tuple[int, int]) -> list[Barcode]:
    if _pyzbar is None:
        return []
    height, width = variant.image.shape
    found = []
    for hit in _pyzbar.decode((variant.image.tobytes(), width, height), symbols=ZBAR_SYMBOLS):
        try:
            value = hit.data.decode("utf-8")
        except UnicodeDecodeError:
            value = hit.data.decode("latin-1")
        rect = hit.rect
        corners = [(p.x, p.y) for p in hit.polygon] or [
            (rect.left, rect.top), (rect.left + rect.width, rect.top + rect.height)]
        found.append(Barcode(ZBAR_SYMBOLOGY.get(hit.type, hit.type), value,
                             variant.box_of(corners, shape)))
    return found


def read_both(variant: Variant, shape: tuple[int, int], formats=()) -> list[Barcode]:
    return read_zxing(variant, shape, formats) + read_zbar(variant, shape)


# ---------------------------------------------------------------- results

class Findings:
    """Decoded codes so far, one entry per code (same symbology and value, touching boxes)."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.codes: list[Barcode] = []

    def add(self, hits: list[Barcode]) -> None:
        for hit in hits:
            for i, known in enumerate(self.codes):
                if (known.symbology, known.value) == (hit.symbology, hit.value) and \
                        _touch(known.box, hit.box):
                    self.codes[i] = Barcode(known.symbology, known.value,
                                            _union(known.box, hit.box))
                    break
            else:
                self.codes.append(hit)

    def covers(self, box: Box, share: float = 0.6) -> bool:
        """Whether decoded codes, widened a little, cover that share of the box."""
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            return True
        mask = np.zeros((y1 - y0, x1 - x0), bool)
        for code in self.codes:
            cx0, cy0, cx1, cy1 = grow(code.box, 0.15, self.shape)
            mask[max(cy0 - y0, 0):max(cy1 - y0, 0), max(cx0 - x0, 0):max(cx1 - x0, 0)] = True
        return bool(mask.mean() >= share)

    def sorted(self) -> list[Barcode]:
        return sorted(self.codes, key=lambda c: (c.box[1], c.box[0], c.symbology, c.value))


def _touch(a: Box, b: Box) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def grow(box: Box, share: float, shape: tuple[int, int], at_least: int = 2) -> Box:
    """The box widened on every side by `share` of its size (at least `at_least` pixels),
    clipped to an image of that (height, width)."""
    x0, y0, x1, y1 = box
    dx = max(at_least, round((x1 - x0) * share))
    dy = max(at_least, round((y1 - y0) * share))
    height, width = shape
    return (max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy))


# ---------------------------------------------------------------- where codes can hide

@dataclass(frozen=True)
class Region:
    box: Box          # in the coordinates of the image it was found in
    angle: float      # bar direction for bar-like regions (degrees), NaN otherwise
    blocks: int


@dataclass(frozen=True)
class BlockMap:
    block: int
    dense: np.ndarray      # bool per block
    coherence: np.ndarray  # 0..1 per block
    angle: np.ndarray      # degrees, the prevailing gradient direction per block


def block_map(grey: np.ndarray) -> BlockMap | None:
    """Per block of the grid: strong-edge density and how aligned the gradients are (the
    structure tensor summed over the block)."""
    height, width = grey.shape
    block = max(4, int(np.ceil(max(height, width) / BLOCK_TARGET)))
    rows, cols = height // block, width // block
    if rows < 2 or cols < 2:
        return None
    g = grey[:rows * block, :cols * block].astype(np.float32)
    gx, gy = scharr(g)
    strong = edge_threshold(g, gx)

    def per_block(values: np.ndarray) -> np.ndarray:
        return values.reshape(rows, block, cols, block).sum(axis=(1, 3))

    density = per_block((np.hypot(gx, gy) > strong).astype(np.float32)) / block ** 2
    jxx, jyy, jxy = per_block(gx * gx), per_block(gy * gy), per_block(gx * gy)
    coherence = np.hypot(jxx - jyy, 2 * jxy) / np.maximum(jxx + jyy, 1e-6)
    angle = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))
    return BlockMap(block, density >= DENSE, coherence, angle)


def scharr(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y gradients (grey levels per pixel) by Scharr's operator, zero at the border.
    Plain central differences pull measured directions towards the diagonals by up to 4
    degrees, too much for turning a long, short-barred code upright; Scharr's stay within
    about half a degree. Their span of two pixels also lets a blurred edge count as one."""
    dx = g[:, 2:] - g[:, :-2]
    dy = g[2:] - g[:-2]
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gx[1:-1, 1:-1] = (3 * dx[:-2] + 10 * dx[1:-1] + 3 * dx[2:]) / 32
    gy[1:-1, 1:-1] = (3 * dy[:, :-2] + 10 * dy[:, 1:-1] + 3 * dy[:, 2:]) / 32
    return gx, gy


def edge_threshold(grey: np.ndarray, gx: np.ndarray) -> float:
    """Gradient magnitude that counts as a strong edge: a share of the image's contrast, but
    well above its noise (estimated from the median gradient, which flat areas dominate)."""
    lo, hi = np.percentile(grey[::2, ::2], (2, 98))
    noise = float(np.median(np.abs(gx[::2, ::2]))) / 0.6745
    return max(STRONG_EDGE * float(hi - lo), NOISE_FACTOR * noise, MIN_EDGE)


def code_like_regions(blocks: BlockMap, shape: tuple[int, int]) -> list[Region]:
    """Connected dense areas (dilated by one block so a code's quiet inside joins up)."""
    regions = [_region(blocks.block, shape, r0, c0, r1, c1, n, float("nan"))
               for r0, c0, r1, c1, n in _components(_dilate(blocks.dense))]
    return _largest_first([r for r in regions if r.blocks >= 4])


def bar_like_regions(blocks: BlockMap, shape: tuple[int, int]) -> list[Region]:
    """Areas of dense blocks whose gradients point the same way, with that bar angle. The
    angles of all such blocks are histogrammed first; each peak (a direction shared by many
    blocks) is then split into connected areas, dilated so that the gaps between bars join."""
    bars = blocks.dense & (blocks.coherence >= COHERENT)
    regions = []
    for direction in _common_directions(blocks.angle[bars]):
        along = bars & (_angle_gaps(blocks.angle, direction) <= SAME_ANGLE)
        for r0, c0, r1, c1, _ in _components(_dilate(along)):
            inside = along[r0:r1, c0:c1]
            if inside.sum() >= 3:
                angle = _mean_axis(blocks.angle[r0:r1, c0:c1][inside])
                regions.append(_region(blocks.block, shape, r0, c0, r1, c1,
                                       int(inside.sum()), angle))
    return _largest_first(regions)


def _common_directions(angles: np.ndarray, most: int = 4) -> list[float]:
    """Peaks of the circular histogram of axial angles (degrees), the strongest first."""
    if angles.size < 3:
        return []
    bins = 36  # 5 degrees each over [-90, 90)
    counts = np.bincount(((angles + 90) // 5).astype(int) % bins, minlength=bins)
    smooth = counts + 0.5 * (np.roll(counts, 1) + np.roll(counts, -1))
    peaks = [i for i in range(bins) if smooth[i] >= 3 and smooth[i] >= smooth[i - 1]
             and smooth[i] > smooth[(i + 1) % bins]]
    peaks.sort(key=lambda i: smooth[i], reverse=True)
    directions = []
    for i in peaks[:most]:
        centre = -90 + 5 * i + 2.5
        near = angles[_angle_gaps(angles, centre) <= SAME_ANGLE]
        directions.append(_mean_axis(near))
    return directions


def _region(block: int, shape: tuple[int, int], r0: int, c0: int, r1: int, c1: int,
            count: int, angle: float) -> Region:
    box = (c0 * block, r0 * block, min(shape[1], c1 * block), min(shape[0], r1 * block))
    return Region(box, angle, count)


def _largest_first(regions: list[Region]) -> list[Region]:
    return sorted(regions, key=lambda r: r.blocks, reverse=True)


def _angle_gaps(angles: np.ndarray, direction: float) -> np.ndarray:
    """Distances between axial directions (defined modulo 180 degrees) and one direction."""
    gap = np.abs(angles - direction) % 180
    return np.minimum(gap, 180 - gap)


def _mean_axis(angles: np.ndarray) -> float:
    doubled = np.deg2rad(2 * angles)
    return float(np.degrees(np.arctan2(np.sin(doubled).mean(), np.cos(doubled).mean())) / 2)


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """(row0, col0, row1, col1, cell count) of each 4-connected component of the mask, ends
    exclusive. Works on runs of set cells along rows, joined by union-find where runs of
    neighbouring rows overlap."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    starts_r, starts_c = np.nonzero(steps == 1)
    _, ends_c = np.nonzero(steps == -1)
    runs = list(zip(starts_r.tolist(), starts_c.tolist(), ends_c.tolist()))
    parent = list(range(len(runs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    above = 0  # first run of the previous row still worth comparing against
    for i, (row, c0, c1) in enumerate(runs):
        while above < i and runs[above][0] < row - 1:
            above += 1
        j = above
        while j < i and runs[j][0] == row - 1:
            if runs[j][1] < c1 and c0 < runs[j][2]:
                parent[root(j)] = root(i)
            j += 1
    extents: dict[int, list[int]] = {}
    for i, (row, c0, c1) in enumerate(runs):
        e = extents.setdefault(root(i), [row, c0, row + 1, c1, 0])
        e[0], e[1] = min(e[0], row), min(e[1], c0)
        e[2], e[3] = max(e[2], row + 1), max(e[3], c1)
        e[4] += c1 - c0
    return [tuple(e) for e in extents.values()]


# ---------------------------------------------------------------- the search

def decode_all(pixels: np.ndarray, faint: bool = True) -> list[Barcode]:
    """Every barcode found in the image, once each, ordered top to bottom. `faint=False`
    skips the look for codes too faint to show an edge (stage 3 on an image where nothing
    code-like was seen), for an image that is not released: its codes only add values to
    search for, and a code printed on a label has edges."""
    if pixels.size == 0 or pixels.min() == pixels.max():
        return []       # one colour everywhere: nothing is drawn, however it is enhanced
    grey = to_grey(pixels)
    findings = Findings(grey.shape)
    work = _plain_pass(grey, findings)
    _closer_search(work, findings, faint)
    return findings.sorted()


def _plain_pass(grey: np.ndarray, findings: Findings) -> Variant:
    """Stage 1; returns the image the later stages work on (scaled down if huge)."""
    whole = Variant(grey, np.eye(3))
    findings.add(read_zxing(whole, grey.shape))
    work = whole
    if max(grey.shape) > WORK_MAX_SIDE:
        work = scaled(whole, WORK_MAX_SIDE / max(grey.shape))
    findings.add(read_zbar(work, grey.shape))
    return work


def _closer_search(work: Variant, findings: Findings, faint: bool = True) -> None:
    """Stages 2 to 5, each only while code-like regions remain unexplained."""
    blocks = block_map(work.image)
    regions = code_like_regions(blocks, work.image.shape) if blocks else []

    def unexplained(candidates: list[Region]) -> list[Region]:
        return [r for r in candidates
                if not findings.covers(work.region_box(r.box, findings.shape))]

    # A faint code can stay below the edge threshold, so an image without any code found so
    # far always gets the enhanced look (when faint codes are looked for).
    if (findings.codes or not faint) and not unexplained(regions):
        return
    _read_enhanced(work, findings, faint)
    if blocks is None or not unexplained(regions):
        return
    for region in unexplained(bar_like_regions(blocks, work.image.shape))[:MAX_SKEWED]:
        _read_upright(work, region, findings)
    small_limit = SMALL_SHARE * work.image.size
    small = [r for r in unexplained(regions) if _area(r.box) <= small_limit]
    for region in small[:MAX_SMALL]:
        _read_enlarged(work, region, findings)


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _read_enhanced(work: Variant, findings: Findings, faint: bool = True) -> None:
    """Stage 3: the whole image stretched, scaled up if small, with both binarisers."""
    factor = min(2.0, (ENHANCED_MAX_PIXELS / work.image.size) ** 0.5)
    _read_every_way(scaled(Variant(stretch(work.image), work.to_input),
                           factor if factor >= 1.5 else 1), findings)
    if faint and not findings.codes:
        stretched = faint_stretch(work.image)
        if stretched is not None:
            _read_every_way(Variant(stretched, work.to_input), findings)


def _read_every_way(variant: Variant, findings: Findings) -> None:
    """Both decoders, and zxing-cpp with its global-histogram binariser too."""
    findings.add(read_both(variant, findings.shape))
    findings.add(read_zxing(variant, findings.shape, binarizer=zxingcpp.Binarizer.GlobalHistogram))


def _read_upright(work: Variant, region: Region, findings: Findings) -> None:
    """Stage 4: a bar-like region turned so that its bars stand upright."""
    tilt = region.angle % 90
    if min(tilt, 90 - tilt) <= NEAR_AXIS:
        return
    crop = cropped(work, grow(region.box, 0.25, work.image.shape, at_least=12))
    crop = Variant(stretch(crop.image), crop.to_input)
    factor = min(3.0, max(1.0, SMALL_TARGET_SIDE / max(crop.image.shape)))
    # turning the content by -angle (what `rotated` does for +angle, y pointing down) lays
    # the region's gradients horizontal
    findings.add(read_both(rotated(scaled(crop, factor), region.angle), findings.shape,
                           SKEW_FORMATS))


def _read_enlarged(work: Variant, region: Region, findings: Findings) -> None:
    """Stage 5: a small region cut out, stretched and scaled up."""
    crop = cropped(work, grow(region.box, 0.25, work.image.shape, at_least=12))
    factor = min(4.0, max(1.0, SMALL_TARGET_SIDE / max(crop.image.shape)))
    if factor > 1:
        findings.add(read_both(scaled(Variant(stretch(crop.image), crop.to_input), factor),
                               findings.shape))
