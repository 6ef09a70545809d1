"""Whether an image is shaped like a reduced copy of the slide: the test every adapter applies
before it calls an image a pyramid level or a thumbnail. A label or a macro photographed beside
the slide has its own shape; releasing it as "a level" would release its pixels."""
from __future__ import annotations

# A reduced level's sides are each rounded (up or down) from the base's divided by the
# downsample, so they may miss the exact ratio by a pixel or two; a small share is allowed on
# top for scanners that crop levels to whole tiles.
SHAPE_SHARE = 0.02
SHAPE_PIXELS = 2.0


def reduced_copy(size: tuple[int, int], base: tuple[int, int]) -> bool:
    """`size` is no larger than `base` and has its shape (same aspect, up to rounding)."""
    w, h = size
    bw, bh = base
    if min(w, h, bw, bh) <= 0 or w > bw or h > bh:
        return False
    return (abs(w - bw * h / bh) <= max(SHAPE_PIXELS, SHAPE_SHARE * w)
            and abs(h - bh * w / bw) <= max(SHAPE_PIXELS, SHAPE_SHARE * h))
