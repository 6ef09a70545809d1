"""Write a planned TIFF into a byte-identical copy of its source (or the source itself).

Strategy: the output starts as an exact copy of the input (kernel copy), so every tile
keeps its offset and bytes. The planned IFDs are written over the old ones where they fit,
changed values are appended after the last live byte, and then every byte that no output
structure references (old values, dropped images, orphaned IFDs, slack space) is zeroed and
the file is cut after its last live byte. Nothing removed survives, nothing kept moves.

A rewritten image byte run (a tile without its text segments, a redacted tile) goes where the
old one started when it is no longer; a longer one is appended after the last live byte and
its offset points there, and the old run, no longer referenced, is zeroed with the rest. A
patched run (NDPI restart intervals) gets its new bytes in place.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...errors import SlideError
from ..files import DirectWrites, PlannedWrites
from .reader import TYPE_NUMPY, Ifd, Tag, TiffFile


@dataclass
class NewValue:
    dtype: int
    count: int
    data: bytes
    high: int = 0   # NDPI: high 32 bits of an inline LONG (a strip offset above 4 GB)

    @property
    def nbytes(self) -> int:
        return len(self.data)


def ascii_value(text: str) -> NewValue:
    raw = text.encode("utf-8") + b"\x00"
    return NewValue(2, len(raw), raw)


def array_value(dtype: int, values, byteorder: str) -> NewValue:
    arr = np.asarray(values).astype(np.dtype(TYPE_NUMPY[dtype]).newbyteorder(byteorder))
    count = arr.size // (2 if dtype in (5, 10) else 1)
    return NewValue(dtype, count, arr.tobytes())


@dataclass
class IfdOut:
    """One IFD of the output: its final tags and its child IFDs."""
    source: Ifd
    tags: dict[int, Tag | NewValue]
    children: dict[int, list["IfdOut"]] = field(default_factory=dict)

    def walk(self):
        yield self
        for kids in self.children.values():
            for kid in kids:
                yield from kid.walk()


@dataclass
class WriteResult:
    size: int
    zeroed_bytes: int
    ifd_offsets: list[int]


def _align(n: int, a: int = 8) -> int:
    return (n + a - 1) // a * a


class _Layout:
    def __init__(self, src: TiffFile):
        self.src = src
        self.bo = src.byteorder
        self.starts: list[int] = [0]
        self.ends: list[int] = [src.header_size]
        self.big_starts: list[np.ndarray] = []
        self.big_ends: list[np.ndarray] = []

    def live(self, start: int, length: int) -> None:
        if length > 0:
            self.starts.append(start)
            self.ends.append(start + length)

    def live_many(self, offs: np.ndarray, cnts: np.ndarray) -> None:
        mask = cnts > 0
        self.big_starts.append(offs[mask])
        self.big_ends.append((offs + cnts)[mask])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        starts = np.concatenate([np.asarray(self.starts, dtype=np.int64)] + self.big_starts)
        ends = np.concatenate([np.asarray(self.ends, dtype=np.int64)] + self.big_ends)
        return starts, ends


def write_tiff(src: TiffFile, out: DirectWrites | PlannedWrites, chain: list[IfdOut],
               run_edits: Mapping[str, Mapping[int, bytes]] | None = None,
               run_patches: Mapping[str, Mapping[int, Sequence[tuple[int, bytes]]]] | None = None
               ) -> WriteResult:
    """Patch a copy of `src` (or `src` itself) through `out`: writes applied at once, or
    planned and applied later with an undo record. `run_edits` gives new bytes for image byte
    runs, by IFD label and run number; `run_patches` new bytes for parts of runs, (offset
    inside the run, bytes), written in place."""
    run_edits = run_edits or {}
    run_patches = run_patches or {}
    if not chain:
        raise SlideError("nothing would remain of the slide")
    bo = src.byteorder
    layout = _Layout(src)
    nodes = [node for root in chain for node in root.walk()]

    # 1. Replaced image byte runs (e.g. a JPEG tile without its COM segment) go where the
    #    old run started; the tail of the old run is freed and zeroed below. A longer one
    #    is appended in step 3.
    longer: dict[int, dict[int, bytes]] = {}
    for node in nodes:
        label = node.source.label
        edits, patches = run_edits.get(label), run_patches.get(label)
        if not edits and not patches:
            continue
        off_tag, cnt_tag, offs, cnts = node.source.data_regions(bo)
        cnts = cnts.copy()
        for index, pieces in (patches or {}).items():
            for pos, data in pieces:
                if pos < 0 or pos + len(data) > cnts[index]:
                    raise SlideError(f"{label}: a patch of run {index} lies outside the run")
                out.write(data, int(offs[index]) + pos)
        for index, payload in (edits or {}).items():
            if len(payload) > cnts[index]:
                longer.setdefault(id(node), {})[index] = payload
            else:
                out.write(payload, int(offs[index]))
            cnts[index] = len(payload)
        if edits:
            old = node.source.tags[cnt_tag]
            node.tags[cnt_tag] = array_value(old.dtype, cnts, bo)

    # 2. Image bytes and unchanged out-of-line values stay where they are.
    for node in nodes:
        regions = _final_regions(node, bo, longer.get(id(node), {}))
        if regions is not None:
            layout.live_many(*regions)
        for code, tag in node.tags.items():
            if code in node.children:
                continue  # rewritten in step 4
            if isinstance(tag, Tag) and tag.value_offset is not None:
                layout.live(tag.value_offset, tag.nbytes)

    # 3. IFDs stay in place when they fit, otherwise they are appended.
    positions: dict[int, int] = {}
    pending: list[tuple[IfdOut, int]] = []
    for node in nodes:
        n_entries = len(node.tags) + sum(1 for kids in node.children.values() if kids)
        size = src.ifd_size(n_entries)
        if size <= node.source.size:
            positions[id(node)] = node.source.offset
            layout.live(node.source.offset, size)
        else:
            pending.append((node, size))
    _, ends = layout.arrays()
    cursor = _align(max(int(ends.max()), _old_values_end(nodes) if longer else 0))
    for node in nodes:
        if id(node) in longer:
            cursor = _append_runs(src, out, node, longer[id(node)], cursor, layout)
    for node, size in pending:
        positions[id(node)] = cursor
        layout.live(cursor, size)
        cursor = _align(cursor + size)

    # 4. Pointer tags to child IFDs, then changed values: written over their old value when
    #    every kept reference to that old value ends up with the same bytes (so offsets do not
    #    move; NDPI shares values between IFDs and some readers guess the high bits of offsets
    #    from where the IFD is), appended otherwise.
    for node in nodes:
        for code, kids in node.children.items():
            if not kids:
                node.tags.pop(code, None)
                continue
            old = node.source.tags[code]
            dtype = old.dtype if not src.bigtiff else (18 if old.dtype in (13, 18) else 16)
            if not src.bigtiff and dtype not in (4, 13):
                dtype = 4
            node.tags[code] = array_value(dtype, [positions[id(k)] for k in kids], bo)
    reusable = _reusable_slots(src, nodes)
    value_offsets: dict[tuple[int, int], int] = {}
    written: set[int] = set()
    for node in nodes:
        for code, tag in node.tags.items():
            if not isinstance(tag, NewValue) or src.is_inline(tag.dtype, tag.nbytes):
                continue
            old = node.source.tags.get(code)
            slot = old.value_offset if old is not None and code not in node.children else None
            if slot is not None and slot in reusable:
                value_offsets[(id(node), code)] = slot
                if slot not in written:
                    out.write(tag.data, slot)
                    layout.live(slot, tag.nbytes)
                    written.add(slot)
                continue
            value_offsets[(id(node), code)] = cursor
            out.write(tag.data, cursor)
            layout.live(cursor, tag.nbytes)
            cursor = _align(cursor + tag.nbytes)
    if not src.bigtiff and not src.ndpi and cursor > 0xFFFFFFFF:
        raise SlideError("output would exceed 4 GB in a classic TIFF")

    # 5. The IFDs themselves, chained in order.
    for i, node in enumerate(chain):
        nxt = positions[id(chain[i + 1])] if i + 1 < len(chain) else 0
        _write_ifd(src, out, node, positions[id(node)], nxt, value_offsets)
    for node in nodes:
        if node.source.kind != "main":
            _write_ifd(src, out, node, positions[id(node)], 0, value_offsets)
    first = positions[id(chain[0])]
    if src.bigtiff:
        out.write(struct.pack(bo + "Q", first), 8)
    elif src.ndpi:
        out.write(struct.pack(bo + "Q", first), 4)
    else:
        out.write(struct.pack(bo + "I", first), 4)

    # 6. Zero every byte nothing points to, and cut the file after its last live byte.
    starts, ends = layout.arrays()
    end = int(ends.max())
    zeroed = out.zero_gaps(starts, ends)
    out.truncate(end)
    return WriteResult(end, zeroed, [positions[id(n)] for n in chain])


def _old_values_end(nodes: list[IfdOut]) -> int:
    """Where the last out-of-line value of the kept IFDs ends: a changed value may be written
    back over its old slot in step 4, so appended runs go after all of them."""
    ends = [tag.value_offset + tag.nbytes for node in nodes for tag in node.source.tags.values()
            if tag.value_offset is not None]
    return max(ends, default=0)


def _reusable_slots(src: TiffFile, nodes: list[IfdOut]) -> set[int]:
    """Old out-of-line value offsets whose every kept reference now holds the same bytes,
    no longer than the old value (so they can be written in place)."""
    finals: dict[int, set[bytes]] = {}
    room: dict[int, int] = {}
    for node in nodes:
        for code, tag in node.tags.items():
            old = node.source.tags.get(code)
            if old is None or old.value_offset is None or code in node.children:
                continue
            if src.is_inline(tag.dtype, tag.nbytes):
                continue
            finals.setdefault(old.value_offset, set()).add(tag.data)
            room[old.value_offset] = max(room.get(old.value_offset, 0), old.nbytes)
    return {slot for slot, datas in finals.items()
            if len(datas) == 1 and len(next(iter(datas))) <= room[slot]}


def _final_regions(node: IfdOut, bo: str, moved: Mapping[int, bytes]
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """Offsets and final counts of the runs that stay where they are (not the `moved` ones)."""
    regions = node.source.data_regions(bo)
    if regions is None:
        return None
    off_tag, cnt_tag, offs, cnts = regions
    final_cnt = node.tags.get(cnt_tag)
    if isinstance(final_cnt, NewValue):
        cnts = np.frombuffer(final_cnt.data, dtype=np.dtype(TYPE_NUMPY[final_cnt.dtype])
                             .newbyteorder(bo)).astype(np.int64)
    if moved:
        keep = np.ones(len(offs), bool)
        keep[list(moved)] = False
        offs, cnts = offs[keep], cnts[keep]
    return offs, cnts


def _append_runs(src: TiffFile, out: DirectWrites | PlannedWrites, node: IfdOut, runs: Mapping[int, bytes], cursor: int,
                 layout: _Layout) -> int:
    """Write runs that grew at `cursor` and point the node's offsets at them; the offsets
    value widens to LONG8 in a BigTIFF when it must (a classic TIFF past 4 GB is refused
    later; NDPI keeps the high 32 bits of an inline offset beside its IFD)."""
    bo = src.byteorder
    off_tag, _, offs, _ = node.source.data_regions(bo)
    offs = offs.copy()
    for index, payload in sorted(runs.items()):
        out.write(payload, cursor)
        layout.live(cursor, len(payload))
        offs[index] = cursor
        cursor = _align(cursor + len(payload))
    dtype = node.source.tags[off_tag].dtype
    top = int(offs.max())
    if dtype == 3 and top > 0xFFFF:
        dtype = 4
    if dtype in (4, 13) and top > 0xFFFFFFFF:
        if src.bigtiff:
            dtype = 16
        elif not (src.ndpi and len(offs) == 1):
            raise SlideError(f"{node.source.label}: a rewritten run would lie past 4 GB, "
                             "beyond what its offsets can hold")
    if src.ndpi and len(offs) == 1 and dtype in (4, 13):
        value = array_value(dtype, [top & 0xFFFFFFFF], bo)
        value.high = top >> 32
    else:
        value = array_value(dtype, offs, bo)
    node.tags[off_tag] = value
    return cursor


def _write_ifd(src: TiffFile, writes: DirectWrites | PlannedWrites, node: IfdOut, pos: int, nxt: int,
               value_offsets: dict[tuple[int, int], int]) -> None:
    bo = src.byteorder
    width = src.inline_size
    out = bytearray()
    highs = bytearray()
    codes = sorted(node.tags)
    out += struct.pack(bo + ("Q" if src.bigtiff else "H"), len(codes))
    for code in codes:
        tag = node.tags[code]
        high = 0
        if src.is_inline(tag.dtype, tag.nbytes):
            value = tag.data.ljust(width, b"\x00")
            high = tag.high
        else:
            where = tag.value_offset if isinstance(tag, Tag) else value_offsets[(id(node), code)]
            if src.ndpi:  # low 32 bits here, high 32 bits after the next-IFD offset
                value, high = struct.pack(bo + "I", where & 0xFFFFFFFF), where >> 32
            else:
                value = struct.pack(bo + ("Q" if src.bigtiff else "I"), where)
        if src.bigtiff:
            out += struct.pack(bo + "HHQ", code, tag.dtype, tag.count) + value
        else:
            out += struct.pack(bo + "HHI", code, tag.dtype, tag.count) + value
        highs += struct.pack(bo + "I", high)
    out += struct.pack(bo + ("I" if src.next_size == 4 else "Q"), nxt)
    if src.ndpi:
        out += highs
    writes.write(bytes(out), pos)
