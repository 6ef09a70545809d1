"""Region redaction, planned: a region given in level-0 pixels (or on another pyramid level)
is painted on every pyramid level, the thumbnail and, where the format gives the geometry,
the overview; only the stored pieces it touches get new bytes.

Each format says, per image it paints (a `Target`), how that image lies over level 0 (the
factors that scale level-0 pixels to its own), how its stored pieces tile it (a layout) and
how one piece is rewritten (a painter: codec and parameters, images/redact.py). This module
does the rest for every format: it resolves `--region-level`, scales and rasterises the
region per image, finds the pieces it touches, rewrites them (over the plan's own cleaned
version of a piece, when text segments were removed from it), and records what it did as
`RedactImage` entries (coordinates, levels, pieces touched; never pixels).

Scaling: a level whose size is not level 0's divided by a whole number has two plausible
mappings, the per-axis ratio of the sizes and the single downsample OpenSlide reports (the
mean of the two ratios); the region is scaled by every factor a target lists and the union
is painted, so that neither reading of the level lets a sliver of the region escape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np

from ..errors import SlideError
from ..images.redact import RedactError, redact_tile
from ..images.regions import RegionError, Regions, mask_for_tile, tiles_touched
from ..model import Image, PatchRun, Plan, RedactImage, ReplaceRun
from ..policy import Redaction

PAINTED_ROLES = ("level", "thumbnail")
PATHS = {
    "jpeg": "JPEG: DCT domain (touched 8x8 blocks set to the fill, every other block kept)",
    "jpeg2k": "JPEG 2000: decoded, painted, re-encoded (same wavelet, resolutions, quality)",
    "lzw": "LZW: decoded, painted, re-encoded (lossless)",
    "deflate": "Deflate: decoded, painted, re-encoded (lossless)",
    "zlib": "Deflate: decoded, painted, re-encoded (lossless)",
    "none": "uncompressed: painted in place",
    "png": "PNG: decoded, painted, re-encoded (lossless)",
    "ndpi": "JPEG restart intervals: DCT domain, only the intervals the region touches",
}
Mask = np.ndarray


class Layout(Protocol):
    def touched(self, level: Regions) -> Iterator[tuple[list[int], Mask]]:
        """(runs, mask) for every piece position the region touches: the runs stored there
        (one per plane) and the mask over that piece's pixels."""


@dataclass
class GridLayout:
    """Pieces on a regular grid, row by row (TIFF tiles and strips, DICOM TILED_FULL frames):
    run = plane * across * down + row * across + column. Strips are one column of pieces as
    wide as the image; the last one is cut at the image's bottom."""
    tile_w: int
    tile_h: int
    width: int
    height: int
    planes: int = 1
    strips: bool = False

    @property
    def across(self) -> int:
        return -(-self.width // self.tile_w)

    @property
    def down(self) -> int:
        return -(-self.height // self.tile_h)

    def touched(self, level: Regions) -> Iterator[tuple[list[int], Mask]]:
        across, down = self.across, self.down
        for c, r in tiles_touched(level, self.tile_w, self.tile_h, across, down):
            x, y = c * self.tile_w, r * self.tile_h
            h = min(self.tile_h, self.height - y) if self.strips else self.tile_h
            mask = mask_for_tile(level, x, y, self.tile_w, h)
            if mask is None:
                continue
            yield [p * across * down + r * across + c for p in range(self.planes)], mask

    def count(self) -> int:
        return self.across * self.down * self.planes


@dataclass
class Target:
    """One image to paint.

    `image` is its name in the plan (an IFD label, "instance 2", "zoom level 1"); `factors`
    the (x, y) factors from level-0 pixels to its own (every one listed is painted);
    `read(run)` a stored piece's bytes; `paint(data, mask)` its new bytes. A target whose
    pieces are not independent images (an NDPI level: one JPEG, restart intervals) sets
    `custom(level_regions, plan)` instead, which adds the edits itself and returns the number
    of pieces it rewrote."""
    image: str
    role: str
    level: int | None
    width: int
    height: int
    factors: list[tuple[float, float]]
    codec: str
    layout: Layout | None = None
    read: Callable[[int], bytes] | None = None
    paint: Callable[[bytes, Mask], bytes] | None = None
    custom: Callable[[Regions, Plan], int] | None = None
    pieces: int = 0                              # stored pieces of the image (report)
    # verification: a rewritten piece decoded (rows, columns, samples), the samples the
    # painted pixels must decode to, and how far they may be off (lossy codecs)
    decode: Callable[[bytes], np.ndarray] | None = None
    expect: tuple[int, ...] = (0,)
    tolerance: int = 0


def factors_of(base: tuple[int, int], size: tuple[int, int]) -> list[tuple[float, float]]:
    """Per-axis ratio of the sizes, and OpenSlide's downsample (their mean) when it differs."""
    fx, fy = base[0] / size[0], base[1] / size[1]
    mean = (fx + fy) / 2
    return [(fx, fy)] if math.isclose(fx, fy, rel_tol=1e-12) else [(fx, fy), (mean, mean)]


def level_regions(regions: Regions, factors: list[tuple[float, float]], width: int,
                  height: int) -> Regions:
    """The level-0 region in an image's pixels: scaled by every factor, united, clipped."""
    import shapely
    from shapely.geometry import box

    scaled = [regions.on_level(fx, fy).geometry for fx, fy in factors]
    geom = scaled[0] if len(scaled) == 1 else shapely.union_all(scaled)
    return Regions(geom.intersection(box(0, 0, width, height)))


# ---- level 0 -------------------------------------------------------------------------------

def level0(redaction: Redaction, targets: list[Target]) -> tuple[Regions, list[Regions]]:
    """The region (and each given region) in level-0 pixels, clipped to level 0; given on
    another level (`--region-level N`), scaled up by that level's own factors, outward."""
    levels = {t.level: t for t in targets if t.role == "level" and t.level is not None}
    if 0 not in levels:
        raise SlideError("regions: the slide has no pyramid level 0 to paint")
    base = levels[0]
    level = redaction.level
    if level not in levels:
        raise SlideError(f"--region-level {level}: the slide has levels 0 to {max(levels)}")
    factors = levels[level].factors
    parts = list(redaction.parts) or [redaction.regions]

    def up(regions: Regions) -> Regions:
        if level == 0:
            return regions
        import shapely

        return Regions(shapely.union_all([regions.to_level0(fx, fy).geometry
                                          for fx, fy in factors]))

    try:
        out_parts = [up(part).check_inside(base.width, base.height) for part in parts]
        union = up(redaction.regions).check_inside(base.width, base.height)
    except RegionError as exc:
        raise SlideError(f"regions: {exc}") from None
    return union, out_parts


# ---- the plan ------------------------------------------------------------------------------

def apply(plan: Plan, redaction: Redaction, targets: list[Target],
          unpainted: list[Image] | None = None) -> None:
    """Paint the region on every target: the plan gets the new bytes (ReplaceRun, PatchRun),
    a RedactImage per target and, in `plan.regions`, each region as given."""
    regions, parts = level0(redaction, targets)
    plan.regions = [_describe(n, part) for n, part in enumerate(parts, 1)]
    for target in targets:
        on_level = level_regions(regions, target.factors, target.width, target.height)
        per_part = [_count_touched(target, level_regions(p, target.factors, target.width,
                                                         target.height)) for p in parts] \
            if target.layout is not None else None
        masks: dict[int, Mask] = {}
        if on_level.is_empty:
            rewritten = 0
        elif target.custom is not None:
            rewritten = _guarded(target, lambda: target.custom(on_level, plan))
        else:
            masks = _paint_pieces(plan, target, on_level)
            rewritten = len(masks)
        x0, y0, x1, y1 = on_level.pixel_bounds() if not on_level.is_empty else (0, 0, 0, 0)
        plan.edits.append(RedactImage(target.image, {
            "role": target.role, "level": target.level,
            "downsample": [round(v, 6) for v in target.factors[0]],
            "bounds": [x0, y0, x1, y1], "pieces": target.pieces,
            # per given region; a custom target (NDPI intervals) counts what it rewrote
            "pieces_touched": (rewritten if per_part is None
                               else per_part if len(per_part) > 1 else per_part[0]),
            "pieces_rewritten": rewritten, "path": PATHS.get(target.codec, target.codec),
            "fill": redaction.fill,
            "_regions": on_level, "_size": (target.width, target.height),
            "_masks": masks, "_decode": target.decode, "_expect": target.expect,
            "_tolerance": target.tolerance}))
    for image in unpainted or []:
        plan.warnings.append(f"{image.index} ({image.role}) is kept but not redacted: the "
                             "format gives no geometry that places it over the slide")


def _count_touched(target: Target, level: Regions) -> int:
    if level.is_empty:
        return 0
    if isinstance(target.layout, GridLayout):
        layout = target.layout
        return len(tiles_touched(level, layout.tile_w, layout.tile_h, layout.across,
                                 layout.down)) * layout.planes
    return sum(len(runs) for runs, _ in target.layout.touched(level))


def _paint_pieces(plan: Plan, target: Target, level: Regions) -> dict[int, Mask]:
    """Rewrite every piece the region touches; returns their masks by run."""
    current = {(e.image, e.run): e for e in plan.edits if isinstance(e, ReplaceRun)}
    masks: dict[int, Mask] = {}
    new_edits: list[ReplaceRun] = []
    for runs, mask in target.layout.touched(level):
        for run in runs:
            old = current.get((target.image, run))
            data = old.data if old is not None else target.read(run)
            new = _guarded(target, lambda: target.paint(data, mask), run)
            new_edits.append(ReplaceRun(target.image, run, new))
            masks[run] = mask
    put_edits(plan, new_edits)
    return masks


def _guarded(target: Target, fn, run: int | None = None):
    try:
        return fn()
    except (RedactError, ValueError, RuntimeError) as exc:
        where = f"{target.image}" + (f" piece {run}" if run is not None else "")
        raise SlideError(f"{where}: cannot redact: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def put_edits(plan: Plan, edits: list[ReplaceRun | PatchRun]) -> None:
    """Add edits of stored pieces, each replacing the plan's earlier edit of that piece (a
    piece cleaned of text segments is painted over its cleaned bytes)."""
    done = {(e.image, e.run) for e in edits}
    plan.edits[:] = [e for e in plan.edits
                     if not (isinstance(e, (ReplaceRun, PatchRun)) and (e.image, e.run) in done)]
    plan.edits.extend(edits)


def _describe(number: int, part: Regions) -> dict:
    from shapely.geometry import mapping

    x0, y0, x1, y1 = part.pixel_bounds()
    geometry = mapping(part.geometry)
    return {"region": number, "bounds": [x0, y0, x1, y1], "area": round(part.geometry.area, 2),
            "geometry": _rounded(geometry)}


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


# ---- painters ------------------------------------------------------------------------------

def painter(codec: str, fill: int, **params) -> Callable[[bytes, Mask], bytes]:
    """A piece's new bytes in `codec`, masked pixels set to `fill` (images/redact.py)."""
    return lambda data, mask: redact_tile(codec, data, mask, fill, **params)


def jpeg_space(data: bytes, tables: bytes | None, default: str | None) -> str | None:
    """The colour space readers decode a JPEG piece in: the stream's own when it says (a JFIF
    marker: YCbCr; an Adobe marker: its transform), else the container's (TIFF Photometric,
    DICOM Photometric Interpretation), else libjpeg's guess. Tools disagree when a container
    says RGB over a JFIF stream; libjpeg-based readers (tifffile, PIL, pydicom) follow the
    stream, and so does the fill."""
    from ..images import jpeg_entropy as je
    from ..images.redact import jpeg_colorspace

    try:
        info = je.parse_jpeg(data, tables)
    except je.JpegError:
        return default
    if info.jfif or info.adobe_transform is not None or default is None:
        return jpeg_colorspace(info)
    return default


def jpeg_painter(fill: int, tables: bytes | None, default: str | None
                 ) -> tuple[Callable[[bytes, Mask], bytes], Callable[[bytes], np.ndarray]]:
    """Painter and decoder of JPEG pieces, each in its own colour space (jpeg_space)."""
    from ..images.redact import decode_jpeg

    def paint(data: bytes, mask: Mask) -> bytes:
        return redact_tile("jpeg", data, mask, fill, tables,
                           colorspace=jpeg_space(data, tables, default))

    def decode(data: bytes) -> np.ndarray:
        return decode_jpeg(data, tables, jpeg_space(data, tables, default))

    return paint, decode


def jpeg_tolerance(fill: int) -> int:
    """How far a decoded JPEG fill may be from the fill: 0 and 255 are exact (the DC rounds
    outward and the decoder clamps), others within the DC quantisation step / 16, at most 16."""
    return 0 if fill in (0, 255) else 16


@dataclass
class Unsupported:
    """A target that cannot be painted, and why (the slide fails with this reason)."""
    image: str
    reason: str


@dataclass
class Targets:
    """What a format offers for painting: targets, images kept without geometry (a warning),
    and images it cannot paint (an error when the region reaches them)."""
    paint: list[Target] = field(default_factory=list)
    unpainted: list[Image] = field(default_factory=list)
    refused: list[Unsupported] = field(default_factory=list)


def plan_regions(plan: Plan, redaction: Redaction, found: Targets) -> None:
    if found.refused:
        first = found.refused[0]
        raise SlideError(f"{first.image}: cannot redact: {first.reason}")
    apply(plan, redaction, found.paint, found.unpainted)
