"""Time region redaction through a synthetic pyramid of JPEG tiles.

    python bench/regions_bench.py [--subsampling 420|444]

A 4800 x 4800 level 0 in 240 x 240 abbreviated JPEG tiles with shared JPEGTables (as an Aperio
SVS stores them), levels at downsample 1, 4 and 16. A 2000 x 2000 pixel region is redacted
through every level (only the tiles it touches, in the DCT domain). For comparison: decoding
and re-encoding every tile of level 0, the naive path. Besides, per-tile times of the own
path (libjpeg-turbo reads the coefficients, our encoder writes them with the tile's own
tables), of libjpeg-turbo's tjTransform with a coefficient filter called back through ctypes
(which re-codes the whole tile with libjpeg's default tables) and the pure-Python decoder.
Medians of 3 (per-tile: of 5).
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fixtures.images import pattern  # noqa: E402
from wsideid.images import turbo_coefs  # noqa: E402
from wsideid.images.redact import redact_tile  # noqa: E402
from wsideid.images.regions import from_rectangles, mask_for_tile, tiles_touched  # noqa: E402

TILE = 240
SIZE = 4800
DOWNSAMPLES = (1, 4, 16)
REGION = (1010, 1130, 2000, 2000)


def split_tables(full: bytes) -> tuple[bytes, bytes]:
    pos, tables, tile = 2, [], [full[:2]]
    while full[pos + 1] != 0xDA:
        length = int.from_bytes(full[pos + 2:pos + 4], "big")
        seg = full[pos:pos + 2 + length]
        (tables if full[pos + 1] in (0xDB, 0xC4) else tile).append(seg)
        pos += 2 + length
    tile.append(full[pos:])
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", b"".join(tile)


def build_pyramid(subsampling: str) -> tuple[bytes, list[dict]]:
    levels, tables = [], None
    for ds in DOWNSAMPLES:
        side = SIZE // ds
        grid = -(-side // TILE)
        tiles = {}
        for r in range(grid):
            for c in range(grid):
                img = pattern(TILE, TILE, 1 + r * grid + c)
                full = imagecodecs.jpeg8_encode(img, level=85, subsampling=subsampling)
                tables, tiles[c, r] = split_tables(full)
        levels.append({"ds": ds, "grid": grid, "tiles": tiles})
    return tables, levels


def redact_pyramid(tables: bytes, levels: list[dict]) -> int:
    regions = from_rectangles([REGION]).check_inside(SIZE, SIZE)
    done = 0
    for level in levels:
        on_level = regions.on_level(level["ds"], level["ds"])
        for c, r in tiles_touched(on_level, TILE, TILE, level["grid"], level["grid"]):
            mask = mask_for_tile(on_level, c * TILE, r * TILE, TILE, TILE)
            redact_tile("jpeg", level["tiles"][c, r], mask, 0, tables)
            done += 1
    return done


def reencode_level(tables: bytes, level: dict) -> None:
    for tile in level["tiles"].values():
        imagecodecs.jpeg8_encode(imagecodecs.jpeg8_decode(tile, tables=tables), level=85)


def median_time(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---- tjTransform with a custom filter (evaluation only) ------------------------------------

class TjRegion(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int),
                ("h", ctypes.c_int)]


class TjTransform(ctypes.Structure):
    pass


FILTER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), TjRegion, TjRegion,
                          ctypes.c_int, ctypes.c_int, ctypes.POINTER(TjTransform))
TjTransform._fields_ = [("r", TjRegion), ("op", ctypes.c_int), ("options", ctypes.c_int),
                        ("data", ctypes.c_void_p), ("customFilter", FILTER)]


def turbo_redactor():
    lib = ctypes.CDLL("libturbojpeg.so.0")
    lib.tjInitTransform.restype = ctypes.c_void_p
    lib.tjTransform.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int,
                                ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)),
                                ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(TjTransform),
                                ctypes.c_int]
    lib.tjFree.argtypes = [ctypes.c_void_p]
    handle = lib.tjInitTransform()

    def redact(full: bytes, mask: np.ndarray, scale: list[tuple[int, int]], dc: list[int]):
        def callback(coeffs, array, plane, comp, _index, _transform):
            sx, sy = scale[comp]
            rows, cols = array.h // 8, array.w // 8
            blocks = np.ctypeslib.as_array(coeffs, shape=(rows, cols, 64))
            part = np.zeros((rows * 8 * sy // 8 * 1, cols * sx), bool)
            y0 = array.y // 8 * sy
            src = mask[y0:y0 + rows * sy, :cols * sx]
            part[:src.shape[0], :src.shape[1]] = src
            hit = part[:rows * sy].reshape(rows, sy, cols, sx).any(axis=(1, 3))
            blocks[hit] = 0
            blocks[hit, 0] = dc[comp]
            return 0

        transform = TjTransform(TjRegion(0, 0, 0, 0), 0, 64, None, FILTER(callback))
        out = ctypes.POINTER(ctypes.c_ubyte)()
        size = ctypes.c_ulong(0)
        if lib.tjTransform(handle, full, len(full), 1, ctypes.byref(out), ctypes.byref(size),
                           ctypes.byref(transform), 0):
            raise RuntimeError("tjTransform failed")
        data = ctypes.string_at(out, size.value)
        lib.tjFree(out)
        return data

    return redact


def per_tile(tables: bytes, level: dict, subsampling: str) -> None:
    tile = level["tiles"][5, 5]
    partial = np.zeros((TILE, TILE), bool)
    partial[60:200, 100:240] = True
    full_mask = np.ones((TILE, TILE), bool)
    own_p = median_time(lambda: redact_tile("jpeg", tile, partial, 0, tables), 5)
    real_reader = turbo_coefs.read_coefficients
    turbo_coefs.read_coefficients = lambda *a: None           # force the Python decoder
    try:
        py_p = median_time(lambda: redact_tile("jpeg", tile, partial, 0, tables), 5)
    finally:
        turbo_coefs.read_coefficients = real_reader
    own_f = median_time(lambda: redact_tile("jpeg", tile, full_mask, 0, tables), 5)
    stream = tile[:2] + tables[2:-2] + tile[2:]
    scale = [(8, 8)] * 3 if subsampling == "444" else [(8, 8), (16, 16), (16, 16)]
    dc = [-205, 0, 0]
    turbo = turbo_redactor()
    tj = median_time(lambda: turbo(stream, partial, scale, dc), 5)
    px = median_time(lambda: imagecodecs.jpeg8_encode(
        imagecodecs.jpeg8_decode(tile, tables=tables), level=85), 5)
    check = imagecodecs.jpeg8_decode(turbo(stream, partial, scale, dc))
    ok = (check[partial] <= 1).all()
    print(f"per tile ({subsampling}, {len(tile)} bytes), partial mask: libjpeg-turbo reads + "
          f"own encoder {own_p * 1e3:.1f} ms, own Python decoder + encoder {py_p * 1e3:.1f} ms, "
          f"tjTransform+filter alone {tj * 1e3:.1f} ms (fill correct: {ok}); fully covered "
          f"tile {own_f * 1e3:.1f} ms; pixel decode+encode {px * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subsampling", default="420", choices=["420", "444"])
    args = parser.parse_args()
    t = time.perf_counter()
    tables, levels = build_pyramid(args.subsampling)
    print(f"pyramid {SIZE}x{SIZE}, {TILE}px tiles, downsamples {DOWNSAMPLES}, "
          f"{args.subsampling}: built in {time.perf_counter() - t:.1f} s")
    count = redact_pyramid(tables, levels)
    redact_s = median_time(lambda: redact_pyramid(tables, levels))
    whole_s = median_time(lambda: reencode_level(tables, levels[0]))
    print(f"redact {REGION[2]}x{REGION[3]} px region through all levels: {count} tiles, "
          f"{redact_s:.2f} s (median of 3)")
    print(f"decode + re-encode all {len(levels[0]['tiles'])} tiles of level 0: "
          f"{whole_s:.2f} s (median of 3)")
    per_tile(tables, levels[0], args.subsampling)


if __name__ == "__main__":
    main()
