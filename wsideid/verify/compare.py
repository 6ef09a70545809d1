"""Byte comparison of kept pieces (tiles, strips, frames, records) between input and output.

Kept pieces mostly sit back to back at the same offsets in both files, so they are compared
in large blocks rather than one read per piece: a slide of tens of thousands of tiles costs a
few dozen reads, not tens of thousands.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from ..buffers import same_bytes, scratch

BLOCK = 8 << 20

Piece = tuple[int, int, int, int]
"""(index, offset in the input, offset in the output, length)."""


def first_difference(fd_a: int, fd_b: int, pieces: Iterable[Piece]) -> int | None:
    """The index of the first piece whose bytes differ between the two files (a piece cut
    short by the end of either file differs), or None when all are equal."""
    block_a, block_b = scratch("compare_a", BLOCK), scratch("compare_b", BLOCK)
    for span in _spans(sorted(pieces, key=lambda p: p[1])):
        start_a, start_b = span[0][1], span[0][2]
        length = span[-1][1] + span[-1][3] - start_a
        done = 0
        while done < length:
            n = min(BLOCK, length - done)
            a, b = block_a[:n], block_b[:n]
            got_a = os.preadv(fd_a, [memoryview(a)], start_a + done)
            got_b = os.preadv(fd_b, [memoryview(b)], start_b + done)
            if got_a != n or got_b != n or not same_bytes(a, b):
                return _culprit(span, start_a, done, a[:got_a].tobytes(), b[:got_b].tobytes())
            done += n
    return None


def _spans(pieces: list[Piece]) -> list[list[Piece]]:
    """Runs of pieces that follow one another directly in both files, each at most a few
    blocks long (a difference is then found without reading everything after it)."""
    spans: list[list[Piece]] = []
    for piece in pieces:
        if piece[3] <= 0:
            continue
        if spans:
            last = spans[-1][-1]
            size = last[1] + last[3] - spans[-1][0][1]
            if (piece[1] == last[1] + last[3] and piece[2] == last[2] + last[3]
                    and size < 4 * BLOCK):
                spans[-1].append(piece)
                continue
        spans.append([piece])
    return spans


def _culprit(span: list[Piece], start: int, done: int, a: bytes, b: bytes) -> int:
    """Which piece of the span holds the first differing byte of this block."""
    if a == b:      # both cut short at the same place: the difference is the missing end
        at = len(a)
    elif len(a) != len(b):
        at = min(len(a), len(b))
    else:
        at = next(i for i in range(len(a)) if a[i] != b[i]) if len(a) < 4096 else _first(a, b)
    where = start + done + at
    for piece in span:
        if piece[1] <= where < piece[1] + piece[3]:
            return piece[0]
    return span[-1][0]


def _first(a: bytes, b: bytes) -> int:
    lo, hi = 0, len(a)
    while hi - lo > 4096:      # halve until the difference is in a small window
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    return lo + next(i for i in range(hi - lo) if a[lo + i] != b[lo + i])
