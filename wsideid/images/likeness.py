"""Whether an image shows the slide: the pixel test a thumbnail (or a preview) passes before it
is released as one.

A format says which image is the thumbnail by a keyword, a position or a record name; none of
those looks at the pixels, and a label photograph can be given the slide's shape. A true
thumbnail is the slide reduced, so at a few dozen pixels a side it matches the slide's
smallest pyramid level reduced the same way: their grey values correlate strongly. A label
(white paper, black print, a barcode) or a macro photograph (the whole glass with its label
end) does not.
"""
from __future__ import annotations

import numpy as np

SIDE = 32                # both pictures are compared at SIDE x SIDE
MIN_CORRELATION = 0.6    # true thumbnails of the real and generated slides: 0.9 and more
FLAT = 4.0               # a grey standard deviation below this is a uniform picture
MAX_FLAT_DIFFERENCE = 24.0
MAX_REFERENCE_PIXELS = 64 << 20   # a smallest level larger than this is not decoded


def grey_small(pixels: np.ndarray) -> np.ndarray:
    """The picture as SIDE x SIDE grey values (area average)."""
    from PIL import Image

    a = np.asarray(pixels)
    if a.dtype != np.uint8:   # 16-bit or float samples: stretched to 0..255
        a = a.astype(np.float32)
        span = float(a.max() - a.min()) or 1.0
        a = ((a - a.min()) * (255.0 / span)).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] >= 3:
        picture = Image.fromarray(np.ascontiguousarray(a[..., :3]), "RGB").convert("L")
    else:
        picture = Image.fromarray(np.ascontiguousarray(a if a.ndim == 2 else a[..., 0]), "L")
    # reduced by whole factors first (fast), then to SIDE x SIDE by area
    factor = max(1, min(picture.size) // (SIDE * 4))
    if factor > 1:
        picture = picture.reduce(factor)
    return np.asarray(picture.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32)


def resembles(candidate: np.ndarray, reference: np.ndarray) -> bool:
    """`candidate` shows what `reference` (the slide's smallest level) shows."""
    a, b = grey_small(candidate), grey_small(reference)
    sa, sb = float(a.std()), float(b.std())
    if sa < FLAT or sb < FLAT:
        return sa < FLAT and sb < FLAT and abs(float(a.mean() - b.mean())) <= MAX_FLAT_DIFFERENCE
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) >= MIN_CORRELATION
