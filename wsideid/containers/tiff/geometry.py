"""How many bytes each tile or strip of a TIFF image decodes to (TIFF 6.0 sections 3, 15, 21).

A tile always holds TileWidth x TileLength pixels (edge tiles are padded); a strip holds
RowsPerStrip rows, the last one what is left (libtiff's TIFFVStripSize), though some writers
encode a full strip there too. Rows are padded to whole bytes; with PlanarConfiguration 2
each tile or strip holds one sample. Subsampled YCbCr data that is not JPEG is stored in
blocks of (h x v) luma samples and one Cb and one Cr (section 21).
"""
from __future__ import annotations

import numpy as np

from .reader import Ifd


def _plane_bytes(width: int, rows: int, bits: int, block: tuple[int, int] | None) -> int:
    if block is not None:
        h, v = block
        blocks = -(-width // h) * -(-rows // v)
        return (blocks * (h * v + 2) * bits + 7) // 8
    return rows * ((width * bits + 7) // 8)


def decoded_sizes(ifd: Ifd, bo: str, runs: int) -> tuple[np.ndarray, np.ndarray]:
    """(exact size, also allowed size) of each of the image's `runs` tiles or strips."""
    width, height = ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0
    spp = ifd.int_value(277, bo, 1) or 1
    bps = ifd.tags.get(258)
    depths = [int(v) for v in bps.values(bo)] if bps is not None else [1]
    depths = (depths + depths[-1:] * spp)[:spp]
    planar = (ifd.int_value(284, bo, 1) or 1) == 2
    bits = depths[0] if planar else sum(depths)
    block = None
    if (ifd.int_value(262, bo) == 6 and ifd.int_value(259, bo, 1) not in (6, 7) and not planar
            and spp == 3):
        sub = ifd.tags.get(530)
        h, v = (int(x) for x in sub.values(bo)[:2]) if sub is not None else (2, 2)
        if (h, v) != (1, 1):
            block, bits = (h, v), depths[0]
    if 322 in ifd.tags and 324 in ifd.tags:
        tw, th = ifd.int_value(322, bo, 0) or 0, ifd.int_value(323, bo, 0) or 0
        size = _plane_bytes(tw, th, bits, block)
        need = np.full(runs, size, dtype=np.int64)
        return need, need
    rows = min(ifd.int_value(278, bo, height) or height, max(height, 1))
    per_plane = max(1, -(-height // rows))
    index = np.arange(runs) % per_plane
    left = np.minimum(rows, np.maximum(height - index * rows, 0))
    full = _plane_bytes(width, rows, bits, block)
    need = np.array([_plane_bytes(width, int(r), bits, block) for r in np.unique(left)])
    need = need[np.searchsorted(np.unique(left), left)]
    return need.astype(np.int64), np.full(runs, full, dtype=np.int64)
