"""A new slide label that carries only the pseudonym: readable text and a Data Matrix.

Landscape labels put the code left of the text, portrait labels put it above; whichever of the
two layouts gives the larger code and text at the requested size is used. The font is Pillow's
built-in default (scalable where Pillow has FreeType), so nothing is loaded from elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np
import zxingcpp
from PIL import Image, ImageDraw, ImageFont

MIN_MODULE = 3        # pixels per Data Matrix module: survives JPEG and resampling
QUIET_MODULES = 2     # white modules around the code (the standard asks for one)
MIN_TEXT_HEIGHT = 12  # pixels per text line, below which text is not readable
MAX_TEXT_LINES = 3
CODE_SHARE = 0.6      # the code takes at most this share of the label's length
REFERENCE_SIZE = 64   # the font size at which text is measured
SEPARATORS = "-_ ./:"  # lines break after these when they can


@dataclass(frozen=True)
class Layout:
    module: int                    # pixels per module
    code_origin: tuple[int, int]   # (x, y) of the code's top-left module, quiet zone outside
    text_box: tuple[int, int, int, int]  # x0, y0, x1, y1 the text is fitted into
    text_height: int               # pixels per line of text as fitted
    lines: tuple[str, ...]


def synthesize_label(width: int, height: int, pseudonym: str, channels: int = 3) -> np.ndarray:
    """A white label of exactly width x height with `pseudonym` as black text and as a Data
    Matrix encoding exactly it. uint8; shape (height, width) for channels=1, else
    (height, width, channels) with channels 3 (RGB) or 4 (RGBA, opaque).

    Raises ValueError when the size cannot hold a readable code and readable text."""
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4, not {channels}")
    if not pseudonym:
        raise ValueError("the pseudonym is empty")
    if width < 1 or height < 1:
        raise ValueError(f"label size {width}x{height} is empty")
    modules = data_matrix(pseudonym)
    layout = best_layout(width, height, max(modules.shape), pseudonym)
    label = np.full((height, width), 255, np.uint8)
    _draw_code(label, modules, layout)
    _draw_text(label, layout)
    if channels == 1:
        return label
    planes = [label] * 3 + ([np.full_like(label, 255)] if channels == 4 else [])
    return np.stack(planes, axis=-1)


def data_matrix(content: str) -> np.ndarray:
    """The symbol's modules without quiet zone, True where dark."""
    try:   # the layout places a square symbol (zxing-cpp may choose a rectangular one)
        symbol = zxingcpp.create_barcode(content, zxingcpp.BarcodeFormat.DataMatrix,
                                         force_square=True)
    except TypeError:
        symbol = zxingcpp.create_barcode(content, zxingcpp.BarcodeFormat.DataMatrix)
    return np.asarray(symbol.to_image(scale=1, add_quiet_zones=False)) < 128


def best_layout(width: int, height: int, symbol_modules: int, text: str) -> Layout:
    candidates = [layout for layout in (_side_by_side(width, height, symbol_modules, text),
                                        _stacked(width, height, symbol_modules, text))
                  if layout is not None]
    if not candidates:
        code_px = (symbol_modules + 2 * QUIET_MODULES) * MIN_MODULE
        raise ValueError(
            f"a {width}x{height} label is too small for this pseudonym: its Data Matrix needs "
            f"{code_px}x{code_px} pixels ({symbol_modules} modules of {MIN_MODULE} px and a quiet "
            f"zone) and the text at least {MIN_TEXT_HEIGHT} px per line beside or below it")
    return max(candidates, key=lambda lay: min(lay.module / MIN_MODULE,
                                               lay.text_height / MIN_TEXT_HEIGHT))


def _margin(width: int, height: int) -> int:
    return max(2, round(0.04 * min(width, height)))


def _side_by_side(width: int, height: int, n: int, text: str) -> Layout | None:
    """Code at the left, text to its right."""
    margin = _margin(width, height)
    side = min(height - 2 * margin, int((width - 2 * margin) * CODE_SHARE))
    module = side // (n + 2 * QUIET_MODULES)
    if module < MIN_MODULE:
        return None
    code_px = (n + 2 * QUIET_MODULES) * module
    origin = (margin + QUIET_MODULES * module, (height - code_px) // 2 + QUIET_MODULES * module)
    text_box = (margin + code_px, margin, width - margin, height - margin)
    return _with_text(module, origin, text_box, text)


def _stacked(width: int, height: int, n: int, text: str) -> Layout | None:
    """Code at the top, text below it."""
    margin = _margin(width, height)
    side = min(width - 2 * margin, int((height - 2 * margin) * CODE_SHARE))
    module = side // (n + 2 * QUIET_MODULES)
    if module < MIN_MODULE:
        return None
    code_px = (n + 2 * QUIET_MODULES) * module
    origin = ((width - code_px) // 2 + QUIET_MODULES * module, margin + QUIET_MODULES * module)
    text_box = (margin, margin + code_px, width - margin, height - margin)
    return _with_text(module, origin, text_box, text)


def _with_text(module: int, origin: tuple[int, int], text_box: tuple[int, int, int, int],
               text: str) -> Layout | None:
    fitted = fit_text(text, text_box[2] - text_box[0], text_box[3] - text_box[1])
    if fitted is None:
        return None
    lines, line_height = fitted
    return Layout(module, origin, text_box, line_height, lines)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _scalable() -> bool:
    return isinstance(_font(REFERENCE_SIZE), ImageFont.FreeTypeFont)


def _split(text: str, parts: int) -> tuple[str, ...]:
    """The text in `parts` lines: broken after separators when that keeps the lines nearly as
    even as equal chunks would, else in equal chunks."""
    step = -(-len(text) // parts)
    even = tuple(text[i:i + step] for i in range(0, len(text), step))
    breaks = [i + 1 for i, ch in enumerate(text[:-1]) if ch in SEPARATORS]
    best = None
    for cut in combinations(breaks, parts - 1):
        lines = tuple(text[a:b] for a, b in zip((0, *cut), (*cut, len(text))))
        if best is None or max(map(len, lines)) < max(map(len, best)):
            best = lines
    if best is not None and max(map(len, best)) <= 1.5 * max(map(len, even)):
        return best
    return even


def fit_text(text: str, box_w: int, box_h: int) -> tuple[tuple[str, ...], int] | None:
    """The text split into 1..MAX_TEXT_LINES lines, and the line height in pixels, that fill
    the box best; None when even the best is below MIN_TEXT_HEIGHT."""
    if box_w <= 0 or box_h <= 0:
        return None
    best: tuple[tuple[str, ...], int] | None = None
    for parts in range(1, min(MAX_TEXT_LINES, len(text)) + 1):
        lines = _split(text, parts)
        block_w, line_h = _measure(lines)
        scale = min(box_w / block_w, box_h / (line_h * len(lines)))
        line_height = int(line_h * scale)
        # another line only when the text grows clearly: fewer breaks read better
        if best is None or line_height > 1.2 * best[1]:
            best = (lines, line_height)
    if best is None or best[1] < MIN_TEXT_HEIGHT:
        return None
    return best


def _measure(lines: tuple[str, ...]) -> tuple[int, int]:
    """Width of the widest line and the height of one line, at REFERENCE_SIZE (or at the
    bitmap font's own size)."""
    font = _font(REFERENCE_SIZE)
    widths = [font.getbbox(line)[2] for line in lines]
    ascent_descent = font.getbbox("Hgjy|")
    return max(max(widths), 1), max(ascent_descent[3], 1)


def _draw_code(label: np.ndarray, modules: np.ndarray, layout: Layout) -> None:
    x, y = layout.code_origin
    dark = np.kron(modules, np.ones((layout.module, layout.module), bool))
    label[y:y + dark.shape[0], x:x + dark.shape[1]][dark] = 0


def _draw_text(label: np.ndarray, layout: Layout) -> None:
    block = _text_image(layout.lines, layout.text_box[2] - layout.text_box[0],
                        layout.text_box[3] - layout.text_box[1])
    x0, y0, x1, y1 = layout.text_box
    top = y0 + (y1 - y0 - block.shape[0]) // 2
    left = x0 + (x1 - x0 - block.shape[1]) // 2
    area = label[top:top + block.shape[0], left:left + block.shape[1]]
    np.minimum(area, block, out=area)


def _text_image(lines: tuple[str, ...], box_w: int, box_h: int) -> np.ndarray:
    """Black lines on white, centred, as large as fits the box. A scalable font is drawn at
    the fitting size; a bitmap-only Pillow draws at its one size and scales the result."""
    block_w, line_h = _measure(lines)
    scale = min(box_w / block_w, box_h / (line_h * len(lines)))
    if _scalable():
        size = max(1, int(REFERENCE_SIZE * scale))
        while size > 1:
            image = _render(lines, _font(size))
            if image.width <= box_w and image.height <= box_h:
                return np.asarray(image)
            size -= 1
        return np.asarray(_render(lines, _font(1)))
    image = _render(lines, _font(REFERENCE_SIZE))
    factor = min(box_w / image.width, box_h / image.height)
    size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    return np.asarray(image.resize(size, Image.Resampling.NEAREST))


def _render(lines: tuple[str, ...], font) -> Image.Image:
    line_h = font.getbbox("Hgjy|")[3]
    width = max(font.getbbox(line)[2] for line in lines)
    image = Image.new("L", (max(width, 1), max(line_h * len(lines), 1)), 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        line_w = font.getbbox(line)[2]
        draw.text(((width - line_w) // 2, i * line_h), line, fill=0, font=font)
    return image
