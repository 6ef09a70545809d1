"""Text on a label or overview, read with the system's Tesseract through pytesseract.

Optional: without pytesseract or without the tesseract program (with its English data),
`read_text` returns None, meaning "OCR not run", never an empty reading. Labels are often
written across the slide, so the image is read in all four right-angle orientations and the
orientation that reads with the highest confidence wins.
"""
from __future__ import annotations

import functools
import shutil

import numpy as np
from PIL import Image

from .barcodes import stretch, to_grey

try:
    import pytesseract
except ImportError:  # optional
    pytesseract = None

MIN_CONFIDENCE = 50.0   # words Tesseract is less sure of (0..100) are dropped
SMALL_SIDE = 600        # images whose long side is smaller are scaled up 2x first


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether Tesseract runs with its English data (asked once per process: asking runs
    the program)."""
    if pytesseract is None or shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
        return False
    try:
        return "eng" in pytesseract.get_languages()
    except (pytesseract.TesseractError, OSError):
        return False


def read_text(pixels: np.ndarray) -> list[str] | None:
    """Lines of text read from the image (best orientation), or None if OCR cannot run."""
    if not available():
        return None
    grey = Image.fromarray(stretch(to_grey(pixels)))
    if max(grey.size) < SMALL_SIDE:
        grey = grey.resize((grey.width * 2, grey.height * 2), Image.Resampling.BICUBIC)
    best: tuple[float, list[str]] = (-1.0, [])
    for angle in (0, 90, 180, 270):
        lines, confidence = _read(grey.rotate(angle, expand=True, fillcolor=255))
        if confidence > best[0]:
            best = (confidence, lines)
    return best[1]


def _read(image: Image.Image) -> tuple[list[str], float]:
    """Lines of confident words and the summed confidence of those words."""
    data = pytesseract.image_to_data(image, lang="eng", config="--psm 11",
                                     output_type=pytesseract.Output.DICT)
    lines: dict[tuple[int, int, int], list[str]] = {}
    total = 0.0
    for i, word in enumerate(data["text"]):
        confidence = float(data["conf"][i])
        if word.strip() and confidence >= MIN_CONFIDENCE:
            key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
            lines.setdefault(key, []).append(word.strip())
            total += confidence * len(word.strip())
    return [" ".join(words) for _, words in sorted(lines.items())], total
