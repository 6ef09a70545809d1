"""Region redaction in a MIRAX slide: where each stored image of each zoom level lies, as
OpenSlide places it (openslide-vendor-mirax.c), and the data file records that move when a
rewritten image grows.

Geometry. The camera takes photos at recorded positions (VIMSLIDE_POSITION_BUFFER, or the
zlib-compressed StitchingIntensityLayer; without either, a grid of the nominal overlap); each
photo is cut into CameraImageDivisionsPerSide^2 images of DIGITIZER_WIDTH x DIGITIZER_HEIGHT
pixels, placed edge to edge from the photo's position. Zoom level n concatenates 2^k x 2^k
images (k: the IMAGE_CONCAT_FACTORs summed up to n) into one stored image of the same size;
once concatenated images come from different photos (and whenever positions or overlaps are
given), a stored image is drawn as tiles_per_image^2 sub-tiles, each at the position of the
level-0 image it came from, divided by 2^k. Photos overlap: a level-0 pixel may be stored in
two images, and both are painted. A region's mask in a stored image is the union, over its
sub-tiles, of the level's region moved to the sub-tile's place, rasterised outward on the
stored image's own pixel grid (positions need not be whole level pixels).

Records. A rewritten image no longer than the old one stays where it was (its tail is
zeroed); a longer one is appended to its data file and Index.dat points there (the old bytes,
no longer referenced, are zeroed with everything else no record uses). Index.dat offsets are
signed 32-bit: a data file cannot grow past 2 GB.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..containers.mirax.index import Record
from ..containers.mirax.slidedat import GENERAL
from ..errors import SlideError
from ..images.redact import decode_jpeg
from ..images.regions import Regions, mask_for_tile
from ..model import Plan, ReplaceRun
from ..policy import Redaction
from . import mrxs_positions
from . import redaction as shared
from .redaction import Target, Targets, jpeg_tolerance, painter

if TYPE_CHECKING:
    from .mrxs import MiraxSlide

POSITION_RECORD = mrxs_positions.POSITION_RECORD
MAX_OFFSET = (1 << 31) - 1


@dataclass
class SubTile:
    run: int
    sx: float      # where the sub-tile is in the stored image
    sy: float
    w: float
    h: float
    px: float      # where OpenSlide draws it on the level
    py: float


class StoredImages:
    """The stored images of one zoom level and the sub-tiles they are drawn as."""

    def __init__(self, subtiles: list[SubTile], image_w: int, image_h: int):
        self.subtiles = subtiles
        self.image_w, self.image_h = image_w, image_h
        self.px = np.array([t.px for t in subtiles])
        self.py = np.array([t.py for t in subtiles])
        self.w = np.array([t.w for t in subtiles])
        self.h = np.array([t.h for t in subtiles])

    def touched(self, level: Regions) -> Iterator[tuple[list[int], np.ndarray]]:
        """(runs, mask) of every stored image some sub-tile of which the region touches."""
        from shapely import affinity

        if level.is_empty or not self.subtiles:
            return
        x0, y0, x1, y1 = level.geometry.bounds
        hit = np.nonzero((self.px < x1) & (self.px + self.w > x0) &
                         (self.py < y1) & (self.py + self.h > y0))[0]
        masks: dict[int, np.ndarray] = {}
        for i in hit.tolist():
            t = self.subtiles[i]
            moved = Regions(affinity.translate(level.geometry, t.sx - t.px, t.sy - t.py))
            ix, iy = int(math.floor(t.sx)), int(math.floor(t.sy))
            iw = min(self.image_w, int(math.ceil(t.sx + t.w))) - ix
            ih = min(self.image_h, int(math.ceil(t.sy + t.h))) - iy
            part = mask_for_tile(moved, ix, iy, iw, ih)
            if part is None:
                continue
            mask = masks.setdefault(t.run, np.zeros((self.image_h, self.image_w), bool))
            mask[iy:iy + ih, ix:ix + iw] |= part
        for run in sorted(masks):
            yield [run], masks[run]


def level_geometry(slide: MiraxSlide) -> list[tuple[float, StoredImages]]:
    """Per zoom level: OpenSlide's downsample and where its stored images are drawn."""
    ini = slide.ini
    divisions = int(ini.sections[GENERAL].get("CameraImageDivisionsPerSide", "1") or 1)
    across, down = slide.images_x, slide.images_y
    sections = slide.level_sections
    sizes = [(ini.integer(s, "DIGITIZER_WIDTH", 1), ini.integer(s, "DIGITIZER_HEIGHT", 1))
             for s in sections]
    overlaps = [(float(ini.value(s, "OVERLAP_X")), float(ini.value(s, "OVERLAP_Y")))
                for s in sections]
    concat, exponents = 0, []
    for s in sections:
        concat += ini.integer(s, "IMAGE_CONCAT_FACTOR")
        exponents.append(concat)
    image0_w, image0_h = sizes[0]
    positions, recorded = _positions(slide, divisions, 1 << exponents[0], image0_w, image0_h,
                                     overlaps[0])
    subtile_mode = recorded or overlaps[0] != (0.0, 0.0)
    per_row = across // divisions
    active: set[int] = set()
    out = []
    for n, record in enumerate(slide.index.hier[:len(sections)]):
        image_concat = 1 << exponents[n]
        per_image = max(1, image_concat // divisions)
        tiles_per_image = per_image if subtile_mode else 1
        positions_per_tile = 1 if subtile_mode else per_image
        tile_w, tile_h = sizes[n][0] / tiles_per_image, sizes[n][1] / tiles_per_image
        subtiles: list[SubTile] = []
        for run, item in enumerate(record.items() if record else ()):
            index = item[0]
            x, y = index % across, index // across
            for yi in range(tiles_per_image):
                yy = y + yi * divisions
                if yy >= down:
                    break
                for xi in range(tiles_per_image):
                    xx = x + xi * divisions
                    if xx >= across:
                        break
                    xp, yp = xx // divisions, yy // divisions
                    cp = yp * per_row + xp
                    if cp >= len(positions):
                        continue
                    pos_x = positions[cp][0] + image0_w * (xx - xp * divisions)
                    pos_y = positions[cp][1] + image0_h * (yy - yp * divisions)
                    if n == 0:
                        if positions[cp] == (0, 0) and (xp or yp):
                            continue
                        active.add(cp)
                    elif not any((yq * per_row + xq) in active
                                 for yq in range(yp, yp + positions_per_tile)
                                 for xq in range(xp, xp + positions_per_tile)):
                        continue
                    subtiles.append(SubTile(run, tile_w * xi, tile_h * yi, tile_w, tile_h,
                                            pos_x / image_concat, pos_y / image_concat))
        downsample = image_concat / (1 << exponents[0])
        out.append((downsample, StoredImages(subtiles, *sizes[n])))
    return out


def _positions(slide: MiraxSlide, divisions: int, concat0: int, image0_w: int, image0_h: int,
               overlap: tuple[float, float]) -> tuple[list[tuple[int, int]], bool]:
    """Camera positions in level-0 units, and whether the slide records them."""
    count = (slide.images_x // divisions) * (slide.images_y // divisions)
    for layer in mrxs_positions.LAYERS:
        value = next((v for v in slide.nonhier_values() if v.layer_name == layer), None)
        if value is None:
            continue
        raw, _ = mrxs_positions.read_positions(slide, value)
        count = len(raw) // POSITION_RECORD
        values = struct.unpack("<" + "Bii" * count, raw)
        return [(values[3 * i + 1] * concat0, values[3 * i + 2] * concat0)
                for i in range(count)], True
    per_row = slide.images_x // divisions
    return [((i % per_row) * int(image0_w * divisions - overlap[0]),
             (i // per_row) * int(image0_h * divisions - overlap[1]))
            for i in range(count)], False


# ---- planning ------------------------------------------------------------------------------

def targets(slide: MiraxSlide, plan: Plan, fill: int) -> Targets:
    found = Targets()
    geometry = level_geometry(slide)
    levels = [img for img in plan.images if img.role == "level"]
    for n, (image, (downsample, stored)) in enumerate(zip(levels, geometry)):
        codec = image.compression.upper()
        runs = image.runs
        read = (lambda run, r=runs: slide.read(int(r.files[run]), int(r.offsets[run]),
                                               int(r.counts[run])))
        if codec == "JPEG":
            paint, decode, tolerance = painter("jpeg", fill), decode_jpeg, jpeg_tolerance(fill)
            expect, name = (fill,) * 3, "jpeg"
        elif codec == "PNG":
            paint, decode, tolerance = painter("png", fill), _png, 0
            expect, name = (fill,) * 3, "png"
        else:
            found.refused.append(shared.Unsupported(image.index, f"no redaction for {codec} images"))
            continue
        found.paint.append(Target(image.index, "level", n, image.width, image.height,
                                  [(downsample, downsample)], name, layout=stored, read=read,
                                  paint=paint, pieces=len(runs), decode=decode, expect=expect,
                                  tolerance=tolerance))
    found.unpainted = [img for img in plan.images
                       if img.role in ("label", "macro", "overview", "thumbnail")
                       and img.action == "keep"]
    return found


def _png(data: bytes) -> np.ndarray:
    import imagecodecs

    image = imagecodecs.png_decode(data)
    return image[..., :3] if image.ndim == 3 else image[..., None]


def plan_regions(slide: MiraxSlide, plan: Plan, redaction: Redaction,
                 hier: list[Record | None]) -> list[Record | None]:
    """Paint the region on every zoom level; returns the hierarchical records with the
    rewritten images' new places and lengths."""
    shared.plan_regions(plan, redaction, targets(slide, plan, redaction.fill))
    return relocate(plan, hier)


def relocate(plan: Plan, hier: list[Record | None]) -> list[Record | None]:
    """Give every rewritten zoom level image its length, and a new place at the end of its
    data file when it grew."""
    levels = {img.index: n for n, img in enumerate(plan.images) if img.role == "level"}
    images = {img.index: img for img in plan.images}
    output = plan.output
    files = output.data_files
    new_place: dict[tuple[int, int], tuple[int, int]] = {}   # (file, old offset) -> (offset, length)
    for edit in plan.edits:
        if not isinstance(edit, ReplaceRun) or edit.image not in levels:
            continue
        runs = images[edit.image].runs
        fileno, offset = int(runs.files[edit.run]), int(runs.offsets[edit.run])
        length = len(edit.data)
        spec = files[fileno]
        spec.keep = [r for r in spec.keep if r[0] != offset]
        if length > int(runs.counts[edit.run]):
            at = -(-spec.end // 16) * 16
            if at + length > MAX_OFFSET:
                raise SlideError(f"{spec.name} would grow past 2 GB (Index.dat offsets are 32-bit)")
            output.moved[(edit.image, edit.run)] = at
            offset_new = at
        else:
            offset_new = offset
        spec.keep.append((offset_new, offset_new + length))
        new_place[(fileno, offset)] = (offset_new, length)
    if not new_place:
        return hier
    out = list(hier)
    for n in levels.values():
        record = out[n]
        if record is None:
            continue
        out[n] = Record([[(i, *new_place.get((f, o), (o, l)), f) for i, o, l, f in page]
                         for page in record.pages])
    return out

