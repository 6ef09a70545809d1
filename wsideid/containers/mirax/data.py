"""MIRAX data files as written: the kept records stay where they are, everything else is zero.

A data file starts with "01.02" + SLIDE_ID (OpenSlide checks it) and holds the stored images
of the records Index.dat points at; nothing else in it is read by anyone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..files import DirectWrites, PlannedWrites


@dataclass
class DataFileOut:
    """What the writer does to one data file: keep these byte ranges, write the header and
    the replaced records, zero everything else, cut the file after its last kept byte."""
    name: str
    keep: list[tuple[int, int]] = field(default_factory=list)
    header: bytes = b""
    replacements: dict[int, bytes] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return max([len(self.header)] + [b for _, b in self.keep])


@dataclass
class MiraxOutput:
    slidedat: bytes
    index: bytes
    data_files: list[DataFileOut]
    # rewritten images that grew and were appended to their data file: (image, run) -> offset
    moved: dict[tuple[str, int], int] = field(default_factory=dict)


def finish_data_file(out_writes: DirectWrites | PlannedWrites, out: DataFileOut) -> int:
    """Zero every byte no kept record uses, write the new header and the replaced records and
    cut the file after its last kept byte (the caller flushes). Returns the bytes zeroed or cut."""
    keep = list(out.keep) + ([(0, len(out.header))] if out.header else [])
    end = out.end
    zeroed = 0
    if keep:
        starts = np.array([a for a, _ in keep] + [end], dtype=np.int64)
        ends = np.array([b for _, b in keep] + [end], dtype=np.int64)
        zeroed = out_writes.zero_gaps(starts, ends)
    else:
        end = 0
    for offset, data in out.replacements.items():
        out_writes.write(data, offset)
    if out.header:
        out_writes.write(out.header, 0)
    size = os.fstat(out_writes.fd).st_size
    out_writes.truncate(end)
    return zeroed + max(0, size - end)
