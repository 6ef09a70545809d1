"""Region redaction in TIFF slides (SVS, OME-TIFF, generic TIFF; NDPI in ndpi_regions.py):
which IFDs are painted and how each one's tiles or strips are rewritten.

Painted: every kept IFD of role level (main chain, and the SubIFD pyramid of an OME-TIFF
plane) and the thumbnail, each placed over level 0 by its size. Label, macro and overview
IFDs carry no geometry in these formats: kept ones are reported, not painted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..containers.tiff.names import compression_name
from ..containers.tiff.writer import IfdOut
from ..model import Plan
from ..images.redact import decode_raw, redact_tile
from .redaction import (PAINTED_ROLES, GridLayout, Target, Targets, Unsupported, factors_of,
                        jpeg_painter, jpeg_tolerance, painter)

if TYPE_CHECKING:
    from .tiff import TiffAdapter, TiffPlanning

SUBIFDS = 330
JPEG_SPACES = {6: "ycbcr", 2: "rgb", 1: "gray", 0: "gray"}
RAW_CODECS = {1: "none", 5: "lzw", 8: "deflate", 32946: "deflate"}
J2K_CODES = {33003, 33004, 33005, 34712}
J2K_TOLERANCE = 24     # a lossy (9/7) re-encode rings a little inside a flat area (measured)


def targets(adapter: TiffAdapter, ctx: TiffPlanning, plan: Plan) -> Targets:
    """Every kept image of the slide that has a place over level 0, as a target."""
    bo = ctx.slide.bo
    roles = {img.index: img for img in plan.images}
    nodes: list[tuple[IfdOut, str]] = []
    for node in plan.output:
        image = roles.get(node.source.label)
        role = image.role if image is not None else "unknown"
        nodes.append((node, role))
        if role == "level":
            nodes += [(kid, "level") for kid in node.children.get(SUBIFDS, [])
                      if kid.source.data_regions(bo) is not None]
    levels = [n for n, role in nodes if role == "level"]
    if not levels:
        return Targets()
    size = _size(levels[0], bo)
    ranks = sorted({_size(n, bo) for n in levels}, key=lambda s: (-s[0], -s[1]))
    found = Targets()
    for node, role in nodes:
        if role not in PAINTED_ROLES:
            image = roles.get(node.source.label)
            if image is not None and role in ("label", "macro", "overview"):
                found.unpainted.append(image)
            continue
        if node.source.data_regions(bo) is None:
            continue
        level = ranks.index(_size(node, bo)) if role == "level" else None
        target = adapter.paint_target(ctx, node, role, level, size)
        if isinstance(target, Unsupported):
            found.refused.append(target)
        elif target is not None:
            found.paint.append(target)
    return found


def _size(node: IfdOut, bo: str) -> tuple[int, int]:
    ifd = node.source
    return ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0


def tiff_target(ctx: TiffPlanning, node: IfdOut, role: str, level: int | None,
                base: tuple[int, int]) -> Target | Unsupported:
    """A tiled or stripped IFD: its pieces on a grid, each rewritten in its own codec."""
    slide = ctx.slide
    bo, ifd, label = slide.bo, node.source, node.source.label
    fill = ctx.policy.redaction.fill
    width, height = _size(node, bo)
    code = ifd.int_value(259, bo, 1) or 1
    photometric = ifd.int_value(262, bo, 2)
    spp = ifd.int_value(277, bo, 1) or 1
    bits = int(ifd.tags[258].values(bo)[0]) if 258 in ifd.tags else 1
    planar = ifd.int_value(284, bo, 1) or 1
    planes = spp if planar == 2 and spp > 1 else 1
    if 322 in ifd.tags:
        layout = GridLayout(ifd.int_value(322, bo, 0), ifd.int_value(323, bo, 0), width, height,
                            planes)
    else:
        rows = min(ifd.int_value(278, bo, height) or height, height)
        layout = GridLayout(width, rows, width, height, planes, strips=True)
    _, _, offs, cnts = ifd.data_regions(bo)
    if not width or not height or not layout.tile_w or not layout.tile_h:
        return Unsupported(label, "the image has no size or tile size")
    if len(offs) != layout.count():
        return Unsupported(label, f"{len(offs)} stored pieces where its geometry needs "
                                  f"{layout.count()}")
    if photometric == 0:
        fill = (1 << min(bits, 16)) - 1 - fill * ((1 << min(bits, 16)) - 1) // 255
    if code in (6, 7):
        if code == 6 or planes > 1 or bits != 8:
            return Unsupported(label, "only 8-bit, interleaved new-style JPEG is supported")
        tables = node.tags.get(347)
        tables = tables.data if tables is not None else None
        space = JPEG_SPACES.get(photometric)
        paint, decode = jpeg_painter(fill, tables, space)
        codec, tolerance = "jpeg", jpeg_tolerance(fill)
        expect = (fill,) * (1 if spp == 1 else 3)
    elif code in J2K_CODES:
        paint = painter("jpeg2k", fill, ycbcr=code == 33003)
        decode = _j2k_decode
        codec, tolerance = "jpeg2k", J2K_TOLERANCE
        expect = (fill, 128, 128) if code == 33003 else (fill,) * spp
    elif code in RAW_CODECS:
        if photometric == 6:
            return Unsupported(label, "uncompressed YCbCr samples are not supported")
        if bits not in (8, 16) or (ifd.int_value(339, bo, 1) or 1) != 1:
            return Unsupported(label, "only 8- and 16-bit unsigned samples are supported")
        if bits == 16:
            fill = fill * 257
        codec, tolerance = RAW_CODECS[code], 0
        per_piece = 1 if planes > 1 else spp
        dtype = "uint8" if bits == 8 else "uint16"
        predictor = ifd.int_value(317, bo, 1) or 1
        expect = (fill,) * per_piece

        def paint(data: bytes, mask: np.ndarray, _codec=codec, _fill=fill) -> bytes:
            return redact_tile(_codec, data, mask, _fill,
                               shape=(mask.shape[0], mask.shape[1], per_piece), dtype=dtype,
                               predictor=predictor, byteorder=bo)

        def decode(data: bytes, _codec=codec) -> np.ndarray:
            return _raw_rows(_codec, data, layout.tile_w, layout.tile_h, per_piece, dtype,
                             predictor, bo)
    else:
        return Unsupported(label, f"no redaction for compression {compression_name(code)}")
    read = lambda run: slide.tiff.read(int(offs[run]), int(cnts[run]))  # noqa: E731
    return Target(label, role, level, width, height, factors_of(base, (width, height)), codec,
                  layout=layout, read=read, paint=paint, pieces=layout.count(),
                  decode=decode, expect=expect, tolerance=tolerance)


def _j2k_decode(data: bytes) -> np.ndarray:
    import imagecodecs

    image = imagecodecs.jpeg2k_decode(data)
    return image if image.ndim == 3 else image[..., None]


def _raw_rows(codec: str, data: bytes, width: int, rows: int, samples: int, dtype: str,
              predictor: int, bo: str) -> np.ndarray:
    """A raw tile or strip decoded; a strip may hold fewer rows than RowsPerStrip."""
    import imagecodecs

    raw = {"lzw": imagecodecs.lzw_decode, "deflate": imagecodecs.zlib_decode,
           "none": bytes}[codec](data)
    per_row = width * samples * np.dtype(dtype).itemsize
    rows = min(rows, len(raw) // per_row)
    return decode_raw("none", raw[:rows * per_row], (rows, width, samples), dtype, predictor, bo)
