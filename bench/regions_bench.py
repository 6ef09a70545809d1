"""Region redaction benchmarks.

    python bench/regions_bench.py slide [--width 100000 --height 80000] [--rounds 3]
                                        [--skip-reencode]
    python bench/regions_bench.py tiles [--subsampling 420|444]

`slide` (the issue's benchmark): a generated Aperio SVS of WIDTH x HEIGHT pixels (256 x 256
abbreviated JPEG tiles with shared JPEGTables, 4:2:0, levels at downsample 4, 16, 64, a
thumbnail, label and macro; 64 distinct tiles repeated), then
- planning a region (`wsideid redact`'s plan: the slide kept as stored, plus the region painted
  through every level and the thumbnail), in-process, for regions of 500, 1000, 2000 and 4000
  pixels square, and the same 2000 x 2000 region on a slide a twenty-fifth the size: the time
  follows the region's area, not the slide's;
- `wsideid redact --in-place` of the 2000 x 2000 region, the whole command (Python start-up,
  reading the slide, planning, writing, verification with OpenSlide), medians of ROUNDS;
- for comparison, decoding and re-encoding every tile of the base level (libjpeg-turbo through
  imagecodecs, one core), the cost of redacting by re-encoding the level.

`tiles`: the per-tile micro-benchmark of images/redact.py: a 4800 x 4800 level 0 in 240 x 240
abbreviated JPEG tiles with shared JPEGTables (as an Aperio SVS stores them), levels at
downsample 1, 4 and 16. A 2000 x 2000 pixel region is redacted
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
import os
import shutil
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


def tiles_main(subsampling: str) -> None:
    t = time.perf_counter()
    tables, levels = build_pyramid(subsampling)
    print(f"pyramid {SIZE}x{SIZE}, {TILE}px tiles, downsamples {DOWNSAMPLES}, "
          f"{subsampling}: built in {time.perf_counter() - t:.1f} s")
    count = redact_pyramid(tables, levels)
    redact_s = median_time(lambda: redact_pyramid(tables, levels))
    whole_s = median_time(lambda: reencode_level(tables, levels[0]))
    print(f"redact {REGION[2]}x{REGION[3]} px region through all levels: {count} tiles, "
          f"{redact_s:.2f} s (median of 3)")
    print(f"decode + re-encode all {len(levels[0]['tiles'])} tiles of level 0: "
          f"{whole_s:.2f} s (median of 3)")
    per_tile(tables, levels[0], subsampling)


# ---- the slide benchmark -------------------------------------------------------------------

SLIDE_TILE = 256
OUT = Path(__file__).resolve().parent / "out"


def make_slide(path: Path, width: int, height: int) -> Path:
    """An Aperio SVS (BigTIFF) of abbreviated JPEG tiles sharing one JPEGTables."""
    import tifffile

    if path.exists():
        return path
    distinct = []
    tables = b""
    for seed in range(64):
        full = imagecodecs.jpeg8_encode(pattern(SLIDE_TILE, SLIDE_TILE, seed), level=80,
                                        subsampling="420")
        tables, tile = split_tables(full)
        distinct.append(tile)
    head = "Aperio Image Library v12.0.5"
    tmp = path.with_suffix(".partial")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        def level(w: int, h: int, desc: str) -> None:
            across, down = -(-w // SLIDE_TILE), -(-h // SLIDE_TILE)
            tiles = (distinct[(r * 7 + c) % len(distinct)] for r in range(down)
                     for c in range(across))
            tw.write(tiles, shape=(h, w, 3), dtype=np.uint8, tile=(SLIDE_TILE, SLIDE_TILE),
                     compression=7, photometric="ycbcr", subsampling=(2, 2), jpegtables=tables,
                     description=desc, metadata=None, software=False)

        level(width, height, f"{head}\r\n{width}x{height} [0,0 {width}x{height}] "
                             f"({SLIDE_TILE}x{SLIDE_TILE}) JPEG/RGB Q=80|AppMag = 40|MPP = 0.25")
        tw.write(pattern(height * 1024 // width, 1024, 5), compression="jpeg", photometric="rgb",
                 rowsperstrip=16, metadata=None, software=False,
                 description=f"{head}\r\n{width}x{height} -> 1024x{height * 1024 // width} - ")
        for ds in (4, 16, 64):
            level(width // ds, height // ds, f"{head}\r\n{width}x{height} ({SLIDE_TILE}x"
                  f"{SLIDE_TILE}) -> {width // ds}x{height // ds} JPEG/RGB Q=80")
        tw.write(pattern(400, 600, 6), compression="lzw", photometric="rgb", subfiletype=1,
                 metadata=None, software=False, description=f"{head}\r\nlabel 600x400")
        tw.write(pattern(500, 1500, 7), compression="jpeg", photometric="rgb", subfiletype=9,
                 metadata=None, software=False, description=f"{head}\r\nmacro 1500x500")
    tmp.rename(path)
    return path


def plan_seconds(path: Path, side: int | None, rounds: int = 5) -> tuple[float, int]:
    """Median seconds of planning `redact` with a side x side region (None: no region) in the
    slide's middle, in-process, and the pieces rewritten."""
    from wsideid.adapters import by_name
    from wsideid.images.regions import from_rectangles
    from wsideid.model import Job, ReplaceRun
    from wsideid.policy import Policy, Redaction

    adapter = by_name("aperio-svs")
    times, rewritten = [], 0
    for _ in range(rounds):
        slide = adapter.read(Job((path,), adapter.name))
        try:
            width = slide.tiff.ifds[0].int_value(256, slide.bo)
            height = slide.tiff.ifds[0].int_value(257, slide.bo)
            redaction = None
            if side:
                region = from_rectangles([(width // 2 - 317, height // 2 - 211, side, side)])
                redaction = Redaction(region, (region,), 0, 0)
            policy = Policy(redaction=redaction, deidentify=False)
            start = time.perf_counter()
            plan = adapter.plan(slide, policy, adapter.stored_naming(slide))
            times.append(time.perf_counter() - start)
            rewritten = sum(isinstance(e, ReplaceRun) for e in plan.edits)
        finally:
            slide.close()
    return statistics.median(times), rewritten


def command_seconds(path: Path, side: int, rounds: int) -> list[float]:
    import subprocess

    import tifffile

    with tifffile.TiffFile(path) as tf:
        width, height = tf.pages[0].imagewidth, tf.pages[0].imagelength
    region = f"{width // 2 - 317},{height // 2 - 211},{side},{side}"
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wsideid", "redact", str(path), "--in-place",
                        "--region", region, "--report", str(OUT / "regions-report.json")],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def reencode_base_level(path: Path) -> tuple[float, int]:
    """Seconds to decode and re-encode every tile of the base level (the tiles read from the
    file, one core), and the tile count."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        tables = page.jpegtables
        offsets, counts = page.dataoffsets, page.databytecounts
        fh = tf.filehandle
        start = time.perf_counter()
        for off, n in zip(offsets, counts):
            fh.seek(off)
            image = imagecodecs.jpeg8_decode(fh.read(n), tables=tables)
            imagecodecs.jpeg8_encode(image, level=80, subsampling="420")
        return time.perf_counter() - start, len(offsets)


def slide_main(width: int, height: int, rounds: int, reencode: bool) -> None:
    import platform

    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}")
    t = time.perf_counter()
    big = make_slide(OUT / f"regions-{width}x{height}.svs", width, height)
    small = make_slide(OUT / f"regions-{width // 5}x{height // 5}.svs", width // 5, height // 5)
    print(f"slides ready in {time.perf_counter() - t:.0f} s: {big.name} "
          f"{big.stat().st_size / 2**30:.2f} GiB, {small.name} {small.stat().st_size / 2**30:.2f} GiB")
    base, _ = plan_seconds(big, None)
    print(f"plan without a region (slide as stored): {base:.3f} s")
    for side in (500, 1000, 2000, 4000):
        s, n = plan_seconds(big, side)
        print(f"plan with a {side}x{side} region: {s:.3f} s ({s - base:.3f} s for the region), "
              f"{n} pieces rewritten")
    small_base, _ = plan_seconds(small, None)
    s, n = plan_seconds(small, 2000)
    print(f"same 2000x2000 region on {small.name}: {s:.3f} s ({s - small_base:.3f} s for the "
          f"region), {n} pieces rewritten")
    work = OUT / "regions-inplace.svs"
    shutil.copy(big, work)
    try:
        times = command_seconds(work, 2000, rounds)
    finally:
        work.unlink(missing_ok=True)
    print(f"`wsideid redact --in-place` 2000x2000, whole command: median "
          f"{statistics.median(times):.2f} s, runs {' '.join(f'{v:.2f}' for v in times)}")
    if reencode:
        seconds, tiles = reencode_base_level(big)
        print(f"decode + re-encode every tile of the base level ({tiles} tiles, one core): "
              f"{seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    slide = sub.add_parser("slide")
    slide.add_argument("--width", type=int, default=100_000)
    slide.add_argument("--height", type=int, default=80_000)
    slide.add_argument("--rounds", type=int, default=3)
    slide.add_argument("--skip-reencode", action="store_true")
    tiles = sub.add_parser("tiles")
    tiles.add_argument("--subsampling", default="420", choices=["420", "444"])
    args = parser.parse_args()
    if args.mode == "slide":
        slide_main(args.width, args.height, args.rounds, not args.skip_reencode)
    else:
        tiles_main(args.subsampling)


if __name__ == "__main__":
    main()
