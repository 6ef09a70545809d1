"""New stored pieces for an image whose pixels changed (a synthesized label, a blanked
overview), in the codec the piece had, so that the container around it stays what it was.

An area to blank goes through `redact.redact_tile` where the codec allows it (JPEG in the DCT
domain: the rest of the piece keeps its exact coefficients); a wholly new picture is encoded.
"""
from __future__ import annotations

import imagecodecs
import numpy as np

from . import redact

JPEG_QUALITY = 90        # a new picture (a synthesized label) in a JPEG image
DEFLATE_LEVEL = 6


class EncodeError(ValueError):
    """A codec this module cannot write."""


def encode(pixels: np.ndarray, codec: str, colorspace: str = "rgb", predictor: int = 1,
           subsampling: tuple[int, int] | None = None) -> bytes:
    """`pixels` (rows, columns[, samples]) as one stored piece of `codec` (jpeg, lzw, deflate,
    zlib, none, png)."""
    a = np.ascontiguousarray(pixels)
    if codec == "jpeg":
        space = {"rgb": "RGB", "ycbcr": "YCbCr", "gray": "GRAY"}.get(colorspace, "YCbCr")
        source = "GRAY" if a.ndim == 2 or a.shape[-1] == 1 else "RGB"
        return imagecodecs.jpeg8_encode(a, level=JPEG_QUALITY, colorspace=source,
                                        outcolorspace=space if source == "RGB" else "GRAY",
                                        subsampling=subsampling)
    if codec == "png":
        return imagecodecs.png_encode(a)
    if codec not in ("lzw", "deflate", "zlib", "none"):
        raise EncodeError(f"cannot write a {codec} image")
    data = a if a.ndim == 3 else a[:, :, None]
    if predictor == 2:   # horizontal differencing, TIFF 6.0 section 14
        data = np.diff(data, axis=1, prepend=np.zeros_like(data[:, :1]))
    elif predictor != 1:
        raise EncodeError(f"cannot write TIFF predictor {predictor}")
    raw = data.astype(a.dtype).tobytes()
    if codec == "lzw":
        return imagecodecs.lzw_encode(raw)
    if codec in ("deflate", "zlib"):
        return imagecodecs.zlib_encode(raw, DEFLATE_LEVEL)
    return raw


def blank_piece(data: bytes, codec: str, mask: np.ndarray, fill: int, tables: bytes | None,
                shape: tuple[int, ...], dtype, colorspace: str, predictor: int) -> bytes:
    """One stored piece with the masked pixels set to the grey `fill`."""
    if codec == "jpeg":
        return redact.redact_tile("jpeg", data, mask, fill, tables, colorspace=colorspace)
    if codec in ("lzw", "deflate", "zlib", "none"):
        return redact.redact_tile(codec, data, mask, fill, shape=shape, dtype=dtype,
                                  predictor=predictor)
    return redact.redact_tile(codec, data, mask, fill)


def boxes_mask(boxes, height: int, width: int, top: int = 0) -> np.ndarray:
    """A mask of `boxes` (x0, y0, x1, y1 in image pixels) over rows top..top+height."""
    mask = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        a, b = max(y0 - top, 0), min(y1 - top, height)
        if b > a:
            mask[a:b, max(x0, 0):min(x1, width)] = True
    return mask
