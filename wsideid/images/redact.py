"""Paint a mask into one stored tile without decoding more than the codec forces.

| codec          | path                                                                     |
|----------------|--------------------------------------------------------------------------|
| jpeg           | DCT domain: every 8x8 block the mask touches, per component, becomes a   |
|                | flat block of the fill; every other block keeps its coefficients and,    |
|                | re-coded with the stream's own Huffman tables, its exact code bits.      |
|                | Coefficients are read by libjpeg-turbo (turbo_coefs.py) or, where that   |
|                | cannot, by the Python decoder (jpeg_entropy.py); an interval the mask    |
|                | covers wholly is not read at all. Writing is always jpeg_entropy.py.     |
|                | Abbreviated tiles (TIFF JPEGTables) stay abbreviated unless a table      |
|                | lacks a symbol the fill needs: then the tile carries complete tables     |
|                | (libjpeg's defaults, T.81 K.3) of its own. APPn/COM are dropped except   |
|                | JFIF and Adobe (they say whether the samples are YCbCr or RGB).          |
| jpeg2k         | decode, paint, re-encode (OpenJPEG): same wavelet (5/3 reversible =      |
|                | lossless, 9/7 = lossy at a PSNR chosen to match the tile's byte size),   |
|                | same resolution count, same MCT flag; raw codestream or JP2 as given.    |
|                | Aperio 33003 (YCbCr samples, no MCT) fills Y=fill, Cb=Cr=128; 33005      |
|                | (RGB with MCT) fills every sample.                                       |
| lzw, deflate,  | decode, undo the TIFF predictor (1 or 2), paint, redo, re-encode:        |
| zlib, none     | lossless.                                                                |
| png            | decode, paint, re-encode (MIRAX): lossless, same bit depth and channels. |

NDPI levels (one JPEG, restart markers, McuStarts tag 65426) go through
`redact_restart_intervals`, which re-codes only the restart intervals the mask touches.
"""
from __future__ import annotations

import math
import struct
from functools import lru_cache
from typing import Callable

import imagecodecs
import numpy as np

from . import jpeg_entropy as je
from . import segments
from . import turbo_coefs

CODECS = ("jpeg", "jpeg2k", "lzw", "deflate", "zlib", "none", "png")


class RedactError(ValueError):
    """A tile this module cannot redact."""


def redact_tile(codec: str, data: bytes, mask: np.ndarray, fill: int,
                tables: bytes | None = None, **codec_params) -> bytes:
    """New bytes of one stored tile with the masked pixels set to `fill`.

    `mask` is boolean (rows, columns) over the tile's pixels (a smaller mask is padded with
    False at the bottom and right). Parameters per codec:
      jpeg: colorspace "ycbcr" | "rgb" | "gray" (default: from the stream, as libjpeg does)
      jpeg2k: ycbcr=True for Aperio 33003; level=PSNR in dB to skip the rate search
      lzw/deflate/zlib/none: shape=(rows, columns, samples), dtype, predictor=1|2,
                             byteorder="<"|">"
      png: none
    """
    if codec == "jpeg":
        return redact_jpeg(data, mask, fill, tables, **codec_params)
    if codec == "jpeg2k":
        return redact_jpeg2k(data, mask, fill, **codec_params)
    if codec in ("lzw", "deflate", "zlib", "none"):
        return redact_raw(codec, data, mask, fill, **codec_params)
    if codec == "png":
        return redact_png(data, mask, fill)
    raise RedactError(f"no redaction for codec {codec!r}")


def _full_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or mask.shape[0] > height or mask.shape[1] > width:
        raise RedactError("mask is larger than the tile")
    out = np.zeros((height, width), bool)
    out[:mask.shape[0], :mask.shape[1]] = mask
    return out


# ---- JPEG in the DCT domain ----------------------------------------------------------------

def redact_jpeg(data: bytes, mask: np.ndarray, fill: int, tables: bytes | None = None,
                colorspace: str | None = None) -> bytes:
    """Flat-fill every block the mask touches; keep every other block's coefficients."""
    info = _parse(data, tables)
    layout = je.block_layout(info)
    comp, by, bx = layout.blocks()
    touched = _touched_blocks(layout, comp, by, bx, _full_mask(mask, info.height, info.width))
    dc_fill = _fill_dc(info, fill, colorspace)
    spans = je.interval_ends(data, info.data_start, info.data_end)
    per = _blocks_per_interval(info, layout)
    if len(spans) != -(-layout.n_blocks // per):
        raise RedactError("JPEG restart markers do not match its restart interval")
    known = _coefficients(data, tables, info, layout, touched, per)
    recode = (info, spans, per, comp, touched, dc_fill, known)
    try:
        coded = _recode(data, *recode, _scan_tables(info), every_interval=False)
        return _assemble(data, info, coded, b"")
    except KeyError:
        # The stream's tables lack a DC size the fill needs (an optimised table): the tile
        # gets complete tables of its own, so every interval is coded anew with them.
        own = _complete_tables(info)
        coded = _recode(data, *recode, own, every_interval=True)
        return _assemble(data, info, coded, _dht_segment(info, own))


def _recode(data: bytes, info: je.JpegInfo, spans: list[tuple[int, int]], per: int,
            comp: np.ndarray, touched: np.ndarray, dc_fill: np.ndarray,
            known: np.ndarray | None, tables: tuple[dict, dict], every_interval: bool
            ) -> list[bytes]:
    coded = []
    for n, (start, end) in enumerate(spans):
        sel = slice(n * per, (n + 1) * per)
        if not touched[sel].any() and not every_interval:
            coded.append(data[start:end])
            continue
        if touched[sel].all():                  # nothing survives: no need to decode
            coefs = np.zeros((len(comp[sel]), 64), np.int32)
        elif known is not None:
            coefs = known[sel].copy()
        else:
            coefs = _decode(data[start:end], info, comp[sel])
        _paint_blocks(coefs, touched[sel], dc_fill[comp[sel]])
        coded.append(je.encode_interval(coefs, comp[sel], info, *tables))
    return coded


def _coefficients(data: bytes, tables: bytes | None, info: je.JpegInfo, layout: je.Layout,
                  touched: np.ndarray, per: int) -> np.ndarray | None:
    """All coefficients read by libjpeg-turbo when some interval is touched only in part
    (that interval must be decoded); None to decode in Python or not at all."""
    parts = [touched[n:n + per] for n in range(0, len(touched), per)]
    if not any(p.any() and not p.all() for p in parts):
        return None
    try:
        return turbo_coefs.read_coefficients(data, tables, info, layout)
    except je.JpegError as exc:
        raise RedactError(str(exc)) from None


def _parse(data: bytes, tables: bytes | None) -> je.JpegInfo:
    try:
        return je.parse_jpeg(data, tables)
    except je.JpegError as exc:
        raise RedactError(str(exc)) from None


def _decode(data: bytes, info: je.JpegInfo, comps: np.ndarray) -> np.ndarray:
    try:
        return je.decode_interval(data, info, comps)
    except je.JpegError as exc:
        raise RedactError(str(exc)) from None


def _blocks_per_interval(info: je.JpegInfo, layout: je.Layout) -> int:
    if info.restart_interval:
        return info.restart_interval * layout.blocks_per_mcu
    return layout.n_blocks


def _touched_blocks(layout: je.Layout, comp: np.ndarray, by: np.ndarray, bx: np.ndarray,
                    mask: np.ndarray, x0: int = 0, y0: int = 0) -> np.ndarray:
    """Per block: does the mask (whose top left pixel is x0, y0, on the MCU grid) touch the
    pixels it covers? A chroma block of a 4:2:0 stream covers 16 x 16 pixels (T.81 A.1.1),
    so it counts when any of them is masked."""
    out = np.zeros(len(comp), bool)
    for c, (sx, sy) in enumerate(layout.scale):
        sel = np.flatnonzero(comp == c)
        if not len(sel):
            continue
        rows, cols = -(-mask.shape[0] // sy), -(-mask.shape[1] // sx)
        padded = np.zeros((rows * sy, cols * sx), bool)
        padded[:mask.shape[0], :mask.shape[1]] = mask
        grid = padded.reshape(rows, sy, cols, sx).any(axis=(1, 3))
        r, k = by[sel] - y0 // sy, bx[sel] - x0 // sx
        inside = (r >= 0) & (r < rows) & (k >= 0) & (k < cols)
        out[sel[inside]] = grid[r[inside], k[inside]]
    return out


def jpeg_colorspace(info: je.JpegInfo) -> str:
    """What libjpeg assumes when nobody says (jdapimin.c default_decompress_parms)."""
    if len(info.components) == 1:
        return "gray"
    if len(info.components) != 3:
        raise RedactError("only 1- and 3-component JPEG is supported")
    if info.jfif:
        return "ycbcr"
    if info.adobe_transform is not None:
        return "ycbcr" if info.adobe_transform else "rgb"
    ids = tuple(c.ident for c in info.components)
    return "rgb" if ids == (82, 71, 66) else "ycbcr"


def _fill_dc(info: je.JpegInfo, fill: int, colorspace: str | None) -> np.ndarray:
    """Quantised DC per component so a flat block decodes to the fill: a block of constant
    sample s has F(0,0) = 8 (s - 128) (T.81 A.3.3 with the level shift of A.3.1)."""
    space = colorspace or jpeg_colorspace(info)
    if space not in ("ycbcr", "rgb", "gray"):
        raise RedactError(f"unknown JPEG colour space {space!r}")
    if not 0 <= fill <= 255:
        raise RedactError("fill must be a sample value 0..255")
    values = [fill] + [128 if space == "ycbcr" else fill] * (len(info.components) - 1)
    q00 = [int(info.qtables[c.tq][0]) for c in info.components]
    # Black and white round outward, so the decoder's clamp to 0..255 makes them exact.
    rounding = {0: math.floor, 255: math.ceil}
    return np.array([rounding.get(v, round)(8 * (v - 128) / q) for v, q in zip(values, q00)],
                    np.int32)


def _paint_blocks(coefs: np.ndarray, touched: np.ndarray, dc: np.ndarray) -> None:
    coefs[touched, 1:] = 0
    coefs[touched, 0] = dc[touched]


def _scan_tables(info: je.JpegInfo) -> tuple[dict, dict]:
    dc = {ci: info.dc_tables[td] for ci, td, _ in info.scan}
    ac = {ci: info.ac_tables[ta] for ci, _, ta in info.scan}
    return dc, ac


@lru_cache(maxsize=1)
def _standard_tables() -> dict[tuple[int, int], je.HuffmanTable]:
    """libjpeg's default tables, which are T.81 Annex K.3: every DC size and every AC symbol
    has a code. Taken from an encoder's output rather than typed out."""
    sample = imagecodecs.jpeg8_encode(np.zeros((16, 16, 3), np.uint8), level=90)
    info = je.parse_jpeg(sample)
    tables = {(0, 0): info.dc_tables[0], (0, 1): info.dc_tables[1],
              (1, 0): info.ac_tables[0], (1, 1): info.ac_tables[1]}
    for (cls, _), table in tables.items():
        if len(table.values) != (162 if cls else 12):
            raise RedactError("the JPEG encoder's default tables are not complete")
    return tables


def _complete_tables(info: je.JpegInfo) -> tuple[dict, dict]:
    """Complete tables under the scan's own table ids: luminance ones for the ids the first
    component uses, chrominance ones for the rest."""
    std = _standard_tables()
    first_td, first_ta = info.scan[0][1], info.scan[0][2]
    dc = {ci: std[(0, 0 if td == first_td else 1)] for ci, td, _ in info.scan}
    ac = {ci: std[(1, 0 if ta == first_ta else 1)] for ci, _, ta in info.scan}
    return dc, ac


def _dht_segment(info: je.JpegInfo, tables: tuple[dict, dict]) -> bytes:
    payload = b""
    done = set()
    for ci, td, ta in info.scan:
        for cls, ident, table in ((0, td, tables[0][ci]), (1, ta, tables[1][ci])):
            if (cls, ident) not in done:
                done.add((cls, ident))
                payload += bytes([cls << 4 | ident]) + table.counts + table.values
    return b"\xff\xc4" + struct.pack(">H", len(payload) + 2) + payload


def _assemble(data: bytes, info: je.JpegInfo, coded: list[bytes], dht: bytes) -> bytes:
    """SOI, the stream's header segments less APPn/COM (JFIF and Adobe, which say how to
    convert colours, stay in their canonical form: segments.app_segment), the new Huffman
    tables if any, the scan (its unused spectral fields as a sequential scan has them), EOI."""
    head = [b"\xff\xd8"]
    for marker, start, end in info.segments:
        if marker == 0xFE or 0xE0 <= marker <= 0xEF:
            kept = segments.app_segment(marker, data[start + 4:end], len(info.components))
            if kept is not None:
                head.append(kept)
            continue
        if marker == 0xDA:
            head.append(dht)
            head.append(data[start:end - 3] + b"\x00\x3f\x00")
            continue
        head.append(data[start:end])
    body = bytearray()
    for n, part in enumerate(coded):
        if n:
            body += bytes([0xFF, 0xD0 + (n - 1) % 8])      # RSTm counts modulo 8 (B.2.1)
        body += part
    return b"".join(head) + bytes(body) + b"\xff\xd9"


# ---- NDPI: one JPEG per level, restart intervals -------------------------------------------

MaskFn = Callable[[int, int, int, int], "np.ndarray | None"]


def redact_restart_intervals(jpeg: bytes, mcu_starts: list[int], mask_fn: MaskFn, fill: int,
                             colorspace: str | None = None) -> tuple[bytes, list[int]]:
    """Re-code only the restart intervals whose MCUs the mask touches.

    `mcu_starts` are the offsets (NDPI tag 65426) where each interval's entropy-coded data
    starts; `mask_fn(x, y, w, h)` returns the mask of that pixel rectangle or None. DC
    prediction restarts at every RSTm (T.81 F.1.2.1, F.2.1.3.1), so each interval is coded on
    its own with the stream's Huffman tables and spliced in; the other intervals' bytes are
    copied unchanged. Returns the new JPEG and the shifted MCU starts.
    """
    info = _parse(jpeg, None)
    layout = je.block_layout(info)
    if not info.restart_interval:
        raise RedactError("JPEG has no restart interval")
    n_mcus = layout.mcus_x * layout.mcus_y
    n_intervals = -(-n_mcus // info.restart_interval)
    if len(mcu_starts) != n_intervals or mcu_starts[0] != info.data_start:
        raise RedactError("MCU starts do not match the JPEG's restart intervals")
    dc_fill = _fill_dc(info, fill, colorspace)
    tables = _scan_tables(info)
    mcu_starts = [int(v) for v in mcu_starts]
    pieces, new_starts, pos, delta = [], [], 0, 0
    for n, start in enumerate(mcu_starts):
        end = mcu_starts[n + 1] - 2 if n + 1 < n_intervals else info.data_end
        first = n * info.restart_interval
        blocks = layout.blocks(first, min(info.restart_interval, n_mcus - first))
        touched = _interval_touched(info, layout, first, blocks, mask_fn)
        new_starts.append(start + delta)
        if touched is None:
            continue
        if jpeg[end:end + 2] not in (b"\xff\xd9", bytes([0xFF, 0xD0 + n % 8])):
            raise RedactError("restart marker missing where the MCU starts say")
        coefs = _decode(jpeg[start:end], info, blocks[0])
        _paint_blocks(coefs, touched, dc_fill[blocks[0]])
        try:
            coded = je.encode_interval(coefs, blocks[0], info, *tables)
        except KeyError:
            raise RedactError("the level's Huffman tables cannot code the fill") from None
        pieces += [jpeg[pos:start], coded]
        pos = end
        delta += len(coded) - (end - start)
    pieces.append(jpeg[pos:])
    return b"".join(pieces), new_starts


def _interval_touched(info: je.JpegInfo, layout: je.Layout, first_mcu: int,
                      blocks: tuple[np.ndarray, np.ndarray, np.ndarray], mask_fn: MaskFn
                      ) -> np.ndarray | None:
    """Touched flags of the interval's blocks, None if the mask misses the interval."""
    mcu_w, mcu_h = layout.scale[0] if len(info.scan) == 1 else (8 * info.hmax, 8 * info.vmax)
    n = len(blocks[0]) // layout.blocks_per_mcu
    row0, row1 = first_mcu // layout.mcus_x, (first_mcu + n - 1) // layout.mcus_x
    if row0 == row1:
        x0, w = (first_mcu % layout.mcus_x) * mcu_w, n * mcu_w
    else:
        x0, w = 0, layout.mcus_x * mcu_w
    y0, h = row0 * mcu_h, (row1 - row0 + 1) * mcu_h
    local = mask_fn(x0, y0, min(w, info.width - x0), min(h, info.height - y0))
    if local is None or not np.asarray(local).any():
        return None
    return _touched_blocks(layout, *blocks, np.asarray(local, bool), x0, y0)


# ---- JPEG 2000 -----------------------------------------------------------------------------

JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def j2k_coding(data: bytes) -> dict:
    """Facts of the main header (T.800 A.5.1 SIZ, A.6.1 COD): components and their
    subsampling, decomposition levels, wavelet, MCT; and whether the stream is JP2."""
    jp2 = data.startswith(JP2_SIGNATURE)
    pos = data.find(b"jp2c") + 4 if jp2 else 0
    if data[pos:pos + 2] != b"\xff\x4f":
        raise RedactError("not a JPEG 2000 codestream")
    pos += 2
    facts: dict = {"jp2": jp2}
    while pos + 4 <= len(data):
        marker, length = struct.unpack(">HH", data[pos:pos + 4])
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xFF51:
            n = struct.unpack(">H", body[34:36])[0]
            comps = [body[36 + 3 * i:39 + 3 * i] for i in range(n)]
            facts["subsampled"] = any(c[1] != 1 or c[2] != 1 for c in comps)
            facts["bits"] = (comps[0][0] & 0x7F) + 1
        elif marker == 0xFF52:
            facts["mct"] = bool(body[4])
            facts["levels"] = body[5]
            facts["reversible"] = body[9] == 1
        elif marker in (0xFF90, 0xFF93):
            break
        pos += 2 + length
    if "levels" not in facts or "bits" not in facts:
        raise RedactError("JPEG 2000 main header lacks SIZ or COD")
    if facts["subsampled"]:
        raise RedactError("JPEG 2000 with subsampled components is not supported")
    return facts


def redact_jpeg2k(data: bytes, mask: np.ndarray, fill: int, ycbcr: bool = False,
                  level: float | None = None) -> bytes:
    """Decode, paint, re-encode with the same wavelet, resolutions and MCT. A reversible
    (5/3) stream is written losslessly; an irreversible (9/7) one at `level` dB PSNR, by
    default the PSNR at which the unpainted tile re-encodes to the original's size."""
    facts = j2k_coding(data)
    image = imagecodecs.jpeg2k_decode(data)
    painted = _paint(image, _full_mask(mask, *image.shape[:2]), fill, ycbcr)
    params = dict(codecformat="JP2" if facts["jp2"] else "J2K", mct=facts["mct"],
                  resolutions=facts["levels"] + 1, reversible=facts["reversible"])
    if facts["reversible"]:
        return imagecodecs.jpeg2k_encode(painted, None, **params)
    if level is None:
        level = j2k_matching_level(image, len(data), params)
    return imagecodecs.jpeg2k_encode(painted, level, **params)


def j2k_matching_level(image: np.ndarray, size: int, params: dict, steps: int = 6) -> float:
    """PSNR target (dB) at which OpenJPEG codes this image in about `size` bytes (bisection
    over 20..70 dB); the painted tile then gets the same quality as its neighbours."""
    lo, hi = 20.0, 70.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if len(imagecodecs.jpeg2k_encode(image, mid, **params)) > size:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _paint(image: np.ndarray, mask: np.ndarray, fill: int, ycbcr: bool = False) -> np.ndarray:
    out = np.array(image, copy=True)
    if out.ndim == 3 and ycbcr:
        half = 1 << (8 * out.dtype.itemsize - 1)
        value = np.array([fill] + [half] * (out.shape[2] - 1), out.dtype)
    else:
        value = np.array(fill, out.dtype)
    out[mask] = value
    return out


# ---- lossless codecs -----------------------------------------------------------------------

def redact_raw(codec: str, data: bytes, mask: np.ndarray, fill: int,
               shape: tuple[int, ...], dtype: str | np.dtype = "uint8", predictor: int = 1,
               byteorder: str = "<") -> bytes:
    """A TIFF tile or strip in LZW, Deflate (Adobe or zlib, both zlib streams) or none."""
    dt = np.dtype(dtype).newbyteorder(byteorder)
    image = decode_raw(codec, data, shape, dtype, predictor, byteorder)
    painted = _paint(image, _full_mask(mask, *image.shape[:2]), fill)
    if predictor == 2:
        painted = np.diff(painted, axis=1, prepend=np.zeros_like(painted[:, :1]))
    out = painted.astype(dt).tobytes()
    if codec == "lzw":
        return imagecodecs.lzw_encode(out)
    if codec in ("deflate", "zlib"):
        return imagecodecs.zlib_encode(out, 6)
    return out


def decode_raw(codec: str, data: bytes, shape: tuple[int, ...], dtype: str | np.dtype = "uint8",
               predictor: int = 1, byteorder: str = "<") -> np.ndarray:
    """The samples (rows, columns, samples) of a TIFF tile or strip in LZW, Deflate or none."""
    decode = {"lzw": imagecodecs.lzw_decode, "deflate": imagecodecs.zlib_decode,
              "zlib": imagecodecs.zlib_decode, "none": bytes}[codec]
    dt = np.dtype(dtype).newbyteorder(byteorder)
    count = int(np.prod(shape))
    raw = np.frombuffer(decode(data), dt)
    if raw.size < count:
        raise RedactError("tile holds fewer samples than its shape")
    image = raw[:count].reshape(shape if len(shape) == 3 else (*shape, 1))
    if predictor == 2:
        image = np.cumsum(image, axis=1, dtype=dt)       # horizontal differencing (TIFF 6 s.14)
    elif predictor != 1:
        raise RedactError("only TIFF predictors 1 and 2 are supported")
    return image


def decode_jpeg(data: bytes, tables: bytes | None = None, colorspace: str | None = None
                ) -> np.ndarray:
    """A JPEG tile decoded as a reader told its colour space decodes it (RGB or grey)."""
    space = {"ycbcr": "YCbCr", "rgb": "RGB", "gray": "GRAYSCALE"}.get(colorspace or "")
    out = "GRAYSCALE" if colorspace == "gray" else ("RGB" if space else None)
    image = imagecodecs.jpeg8_decode(data, tables=tables, colorspace=space, outcolorspace=out)
    return image if image.ndim == 3 else image[..., None]


def redact_png(data: bytes, mask: np.ndarray, fill: int) -> bytes:
    image = imagecodecs.png_decode(data)
    return imagecodecs.png_encode(_paint(image, _full_mask(mask, *image.shape[:2]), fill))
