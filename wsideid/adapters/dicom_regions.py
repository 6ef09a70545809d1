"""Region redaction in a DICOM WSI series: every kept VOLUME instance (each a pyramid level,
every focal plane and optical path of it) and the THUMBNAIL, placed over the largest VOLUME
by the size of its total pixel matrix.

Frames lie on the total pixel matrix row by row (TILED_FULL: frame = plane * columns * rows +
row * columns + column, planes being focal planes and optical paths), or where the
per-frame Plane Position (Slide) says (TILED_SPARSE). A touched frame is rewritten in its
transfer syntax: JPEG baseline in the DCT domain, JPEG 2000 decoded and re-encoded, native
(uncompressed) pixel data painted in place. The writer rebuilds an encapsulated pixel data
element from its fragments, so a frame may grow; the Extended Offset Table, which would be
wrong, is removed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..images.redact import decode_raw, redact_tile
from ..images.regions import Regions, mask_for_tile
from ..model import Plan, ReplaceRun
from ..policy import Redaction
from . import redaction as shared
from .redaction import (GridLayout, Target, Targets, Unsupported, factors_of, jpeg_painter,
                        jpeg_tolerance)

NATIVE = {"1.2.840.10008.1.2.1"}
JPEG_BASELINE = {"1.2.840.10008.1.2.4.50"}
J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
EXTENDED_OFFSET_TABLE = (0x7FE00001, 0x7FE00002)
SPACES = {"RGB": "rgb", "YBR_FULL": "ycbcr", "YBR_FULL_422": "ycbcr", "MONOCHROME2": "gray"}


@dataclass
class SparseLayout:
    """Frames wherever the per-frame functional groups put them (TILED_SPARSE)."""
    x: np.ndarray
    y: np.ndarray
    tile_w: int
    tile_h: int

    def touched(self, level: Regions) -> Iterator[tuple[list[int], np.ndarray]]:
        x0, y0, x1, y1 = level.geometry.bounds
        hit = np.nonzero((self.x < x1) & (self.x + self.tile_w > x0) &
                         (self.y < y1) & (self.y + self.tile_h > y0))[0]
        for frame in hit.tolist():
            mask = mask_for_tile(level, int(self.x[frame]), int(self.y[frame]), self.tile_w,
                                 self.tile_h)
            if mask is not None:
                yield [frame], mask


def plan_regions(plan: Plan, redaction: Redaction, outputs: list) -> None:
    shared.plan_regions(plan, redaction, targets(outputs, redaction.fill))
    painted = {e.image for e in plan.edits if isinstance(e, ReplaceRun)}
    for out in outputs:
        if out.image.index in painted:
            for tag in EXTENDED_OFFSET_TABLE:   # offsets change with the frames' lengths
                if tag in out.header:
                    del out.header[tag]


def targets(outputs: list, fill: int) -> Targets:
    found = Targets()
    painted = [o for o in outputs if o.instance.role in ("level", "thumbnail")]
    found.unpainted = [o.image for o in outputs if o.instance.role in ("label", "overview")]
    sizes = [_size(o.instance.header) for o in painted if o.instance.role == "level"]
    if not sizes:
        return found
    base = max(sizes)
    ranks = sorted(set(sizes), reverse=True)
    for out in painted:
        target = _target(out, fill, base, ranks)
        (found.refused if isinstance(target, Unsupported) else found.paint).append(target)
    return found


def _size(ds) -> tuple[int, int]:
    return (int(ds.get("TotalPixelMatrixColumns", ds.get("Columns", 0)) or 0),
            int(ds.get("TotalPixelMatrixRows", ds.get("Rows", 0)) or 0))


def _target(out, fill: int, base: tuple[int, int], ranks: list) -> Target | Unsupported:
    from ..containers.dicom.io import locate_pixels

    inst = out.instance
    ds, label = inst.header, out.image.index
    width, height = _size(ds)
    tile_w, tile_h = int(ds.Columns), int(ds.Rows)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    layout = _layout(ds, width, height, tile_w, tile_h, frames)
    if isinstance(layout, str):
        return Unsupported(label, layout)
    pixels = locate_pixels(inst.source, inst.pixel_start)
    if syntax in NATIVE:
        if photometric not in ("RGB", "MONOCHROME2") or int(ds.get("PlanarConfiguration", 0)):
            return Unsupported(label, f"native {photometric} pixel data is not supported")
        bits = int(ds.get("BitsAllocated", 8))
        if bits not in (8, 16):
            return Unsupported(label, f"{bits}-bit native pixel data is not supported")
        dtype = "uint8" if bits == 8 else "uint16"
        size = tile_w * tile_h * spp * bits // 8
        start = pixels.start + 12
        if size * frames > pixels.end - start:
            return Unsupported(label, "native pixel data is shorter than its frames")
        offsets = start + size * np.arange(frames, dtype=np.int64)
        counts = np.full(frames, size, np.int64)
        value = fill * 257 if bits == 16 else fill
        shape = (tile_h, tile_w, spp)

        def paint(data: bytes, mask: np.ndarray) -> bytes:
            return redact_tile("none", data, mask, value, shape=shape, dtype=dtype)

        def decode(data: bytes) -> np.ndarray:
            return decode_raw("none", data, shape, dtype)
        codec, expect, tolerance = "none", (value,) * spp, 0
    elif syntax in JPEG_BASELINE:
        jpeg_paint, jpeg_decode = jpeg_painter(fill, None, SPACES.get(photometric))

        def paint(data: bytes, mask: np.ndarray) -> bytes:
            return jpeg_paint(_unpadded(data), mask)

        def decode(data: bytes) -> np.ndarray:
            return jpeg_decode(_unpadded(data))
        offsets, counts = pixels.frame_offsets, pixels.frame_lengths
        codec, expect, tolerance = "jpeg", (fill,) * spp, jpeg_tolerance(fill)
    elif syntax in J2K:
        def paint(data: bytes, mask: np.ndarray) -> bytes:
            return redact_tile("jpeg2k", _unpadded_j2k(data), mask, fill)

        def decode(data: bytes) -> np.ndarray:
            import imagecodecs

            image = imagecodecs.jpeg2k_decode(_unpadded_j2k(data))
            return image if image.ndim == 3 else image[..., None]
        offsets, counts = pixels.frame_offsets, pixels.frame_lengths
        codec, expect, tolerance = "jpeg2k", (fill,) * spp, 24
    else:
        return Unsupported(label, f"no redaction for transfer syntax {syntax}")
    if len(offsets) != frames:
        return Unsupported(label, f"{len(offsets)} fragments for {frames} frames "
                                  "(frames in several fragments are not supported)")

    def read(run: int) -> bytes:
        with open(inst.source, "rb") as fh:
            fh.seek(int(offsets[run]))
            return fh.read(int(counts[run]))

    level = ranks.index((width, height)) if inst.role == "level" else None
    return Target(label, inst.role, level, width, height, factors_of(base, (width, height)),
                  codec, layout=layout, read=read, paint=paint, pieces=frames, decode=decode,
                  expect=expect, tolerance=tolerance)


def _layout(ds, width: int, height: int, tile_w: int, tile_h: int, frames: int):
    if not (width and height and tile_w and tile_h):
        return "the image has no size"
    organisation = str(ds.get("DimensionOrganizationType", "") or "")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if organisation != "TILED_FULL" and per_frame is not None and len(per_frame) == frames:
        x, y = np.zeros(frames, np.int64), np.zeros(frames, np.int64)
        for i, item in enumerate(per_frame):
            try:
                pos = item.PlanePositionSlideSequence[0]
                x[i] = int(pos.ColumnPositionInTotalImagePixelMatrix) - 1
                y[i] = int(pos.RowPositionInTotalImagePixelMatrix) - 1
            except (AttributeError, IndexError, TypeError, ValueError):
                return "a frame has no position in the total pixel matrix"
        return SparseLayout(x, y, tile_w, tile_h)
    layout = GridLayout(tile_w, tile_h, width, height)
    per_plane = layout.across * layout.down
    if frames % per_plane:
        return f"{frames} frames do not fill a grid of {per_plane} tiles"
    layout.planes = frames // per_plane
    return layout


def _unpadded(data: bytes) -> bytes:
    """A JPEG frame without the NUL that pads it to an even length (PS3.5 A.4)."""
    return data[:-1] if data.endswith(b"\xff\xd9\x00") else data


def _unpadded_j2k(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\xff\xd9\x00") else data

