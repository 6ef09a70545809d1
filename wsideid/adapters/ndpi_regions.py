"""Region redaction in an NDPI level: one JPEG per level, cut by restart markers into
intervals whose starts tag 65426 (McuStarts, high bits in 65432) lists; OpenSlide reads the
level interval by interval from those starts.

Only the intervals the region touches are re-coded (DCT domain, the level's own Huffman
tables; images/redact.py). A re-coded interval is almost always shorter than the old one
(painted blocks code in a few bits): it is written in place and padded to the old length
with 0xFF fill bytes, which a decoder skips before the next marker (T.81 B.1.1.2). Every
offset, the byte count and the MCU starts then stay as they are, and the level is patched,
never read or held whole. Should an interval grow, the level is rebuilt with every interval
spliced in, and its byte count and MCU starts are rewritten from the new positions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..containers.tiff.writer import IfdOut, array_value
from ..errors import SlideError
from ..images import jpeg_entropy as je
from ..images import redact
from ..images.regions import Regions, mask_for_tile
from ..model import PatchRun, Plan, ReplaceRun
from .redaction import Target, factors_of, jpeg_tolerance, put_edits

if TYPE_CHECKING:
    from .tiff import TiffPlanning

MCU_STARTS, MCU_STARTS_HIGH = 65426, 65432


def level_target(ctx: TiffPlanning, node: IfdOut, role: str, level: int | None,
                 base: tuple[int, int]) -> Target:
    slide = ctx.slide
    bo, ifd, label = slide.bo, node.source, node.source.label
    width, height = ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0
    _, _, offs, cnts = ifd.data_regions(bo)
    fill = ctx.policy.redaction.fill
    space = "ycbcr" if ifd.int_value(262, bo, 6) == 6 else "rgb"

    def custom(on_level: Regions, plan: Plan) -> int:
        current = {e.run: e for e in plan.edits if isinstance(e, ReplaceRun) and e.image == label}
        data = current[0].data if 0 in current else None
        size = len(data) if data is not None else int(cnts[0])

        def read(a: int, b: int) -> bytes:
            return data[a:b] if data is not None else slide.tiff.read(int(offs[0]) + a, b - a)

        def mask_fn(x: int, y: int, w: int, h: int):
            return mask_for_tile(on_level, x, y, w, h)

        starts = _mcu_starts(node, bo)
        if starts is None or len(starts) < 2:
            whole = data if data is not None else read(0, size)
            mask = mask_fn(0, 0, width, height)
            new = redact.redact_jpeg(whole, mask, fill, colorspace=space)
            put_edits(plan, [ReplaceRun(label, 0, new)])
            return 1
        patches = _patches(read, size, starts, on_level, fill, space)
        if patches is None:   # an interval grew: the level is rebuilt
            whole = data if data is not None else read(0, size)
            new, new_starts = redact.redact_restart_intervals(whole, list(starts), mask_fn, fill,
                                                              colorspace=space)
            put_edits(plan, [ReplaceRun(label, 0, new)])
            _set_mcu_starts(node, bo, np.asarray(new_starts, np.int64))
            return sum(1 for a, b in zip(starts, new_starts) if a != b) or 1
        if data is not None:
            patched = bytearray(data)
            for pos, piece in patches:
                patched[pos:pos + len(piece)] = piece
            put_edits(plan, [ReplaceRun(label, 0, bytes(patched), current[0].header_shift)])
        elif patches:
            put_edits(plan, [PatchRun(label, 0, tuple(patches))])
        return len(patches)

    return Target(label, role, level, width, height, factors_of(base, (width, height)), "ndpi",
                  custom=custom, pieces=_interval_count(node, bo),
                  tolerance=jpeg_tolerance(fill))


def _mcu_starts(node: IfdOut, bo: str) -> np.ndarray | None:
    """The level's MCU starts as the plan will write them (after text segments are removed
    from the JPEG header, they are shifted: ndpi.py)."""
    low = node.tags.get(MCU_STARTS)
    if low is None:
        return None
    starts = _values(low, bo)
    high = node.tags.get(MCU_STARTS_HIGH)
    if high is not None:
        starts = starts + (_values(high, bo) << 32)
    return starts


def _values(tag, bo: str) -> np.ndarray:
    from ..containers.tiff.reader import TYPE_NUMPY

    return np.frombuffer(tag.data, np.dtype(TYPE_NUMPY[tag.dtype]).newbyteorder(bo)).astype(np.int64)


def _interval_count(node: IfdOut, bo: str) -> int:
    starts = _mcu_starts(node, bo)
    return len(starts) if starts is not None else 1


def _set_mcu_starts(node: IfdOut, bo: str, starts: np.ndarray) -> None:
    low = node.source.tags[MCU_STARTS]
    node.tags[MCU_STARTS] = array_value(low.dtype, starts & 0xFFFFFFFF, bo)
    high = node.source.tags.get(MCU_STARTS_HIGH)
    if high is not None:
        node.tags[MCU_STARTS_HIGH] = array_value(high.dtype, starts >> 32, bo)
    elif int(starts.max()) > 0xFFFFFFFF:
        raise SlideError(f"{node.source.label}: MCU starts past 4 GB need tag 65432")


def _patches(read, size: int, starts: np.ndarray, on_level: Regions, fill: int, space: str
             ) -> list[tuple[int, bytes]] | None:
    """(offset, bytes) of every re-coded interval, each padded to its old length; None when
    one of them grew (or the level's tables cannot code the fill)."""
    info = je.parse_jpeg(read(0, int(starts[0])) + b"\xff\xd9")
    layout = je.block_layout(info)
    ri = info.restart_interval
    n_mcus = layout.mcus_x * layout.mcus_y
    if not ri or len(starts) != -(-n_mcus // ri) or int(starts[0]) != info.data_start:
        raise SlideError("NDPI MCU starts do not match the level's restart intervals")
    tail = read(size - 2, size)
    last_end = size - 2 if tail == b"\xff\xd9" else size
    dc_fill = redact._fill_dc(info, fill, space)
    tables = redact._scan_tables(info)

    def mask_fn(x: int, y: int, w: int, h: int):
        return mask_for_tile(on_level, x, y, w, h)

    out = []
    for n in _candidates(info, layout, on_level.pixel_bounds()):
        first = n * ri
        blocks = layout.blocks(first, min(ri, n_mcus - first))
        touched = redact._interval_touched(info, layout, first, blocks, mask_fn)
        if touched is None:
            continue
        a = int(starts[n])
        b = int(starts[n + 1]) - 2 if n + 1 < len(starts) else last_end
        old = read(a, b)
        if touched.all():
            coefs = np.zeros((len(blocks[0]), 64), np.int32)
        else:
            coefs = je.decode_interval(old, info, blocks[0])
        redact._paint_blocks(coefs, touched, dc_fill[blocks[0]])
        try:
            new = je.encode_interval(coefs, blocks[0], info, *tables)
        except KeyError:
            return None
        if len(new) > len(old):
            return None
        out.append((a, new + b"\xff" * (len(old) - len(new))))
    return out


def _candidates(info: je.JpegInfo, layout: je.Layout, bounds: tuple[int, int, int, int]
                ) -> list[int]:
    """Intervals with an MCU in the region's bounding box (the caller masks each one)."""
    mcu_w, mcu_h = (8 * info.hmax, 8 * info.vmax) if len(info.scan) > 1 else layout.scale[0]
    x0, y0, x1, y1 = bounds
    c0, c1 = max(0, x0 // mcu_w), min(layout.mcus_x, -(-x1 // mcu_w))
    r0, r1 = max(0, y0 // mcu_h), min(layout.mcus_y, -(-y1 // mcu_h))
    if c0 >= c1 or r0 >= r1:
        return []
    rows, cols = np.arange(r0, r1), np.arange(c0, c1)
    mcus = (rows[:, None] * layout.mcus_x + cols[None, :]).ravel()
    return np.unique(mcus // info.restart_interval).tolist()
