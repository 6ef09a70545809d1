"""Benchmarks: de-identify generated slides, against `cp` of the same file in the same run.

    python bench/run.py [--case svs|ndpi|ome|dicom|mrxs|convert|startup|all] [--size-gb 2]
                        [--rounds 3] [--baseline OTHER_CHECKOUT]

Cases: `svs`, a ~2 GB tiled-JPEG Aperio SVS; `ndpi`, a 5 GB sparse NDPI (every offset above
4 GB); `ome`, a ~1 GB pyramidal OME-TIFF with label and macro; `dicom`, a ~2 GB DICOM WSI
series folder (compared with `cp -r`); `mrxs`, a ~1 GB MIRAX slide (slide.mrxs + slide/, compared
with `cp -r` of both); `lzw` and `deflate`, ~1 GB Aperio SVS pyramids of LZW or Deflate tiles
(every tile decoded to check its stream's end and size). For each: wall-time ratios
(deid / cp and deid / cp+fsync; as root the page cache is emptied before every run), the
in-place time (inside the process after imports, and for the whole command) and peak RSS.
`startup`: `wsideid --version` (the interpreter and the command line, nothing of any format) and
`deid` of a 80 KB slide (the fixed cost every slide pays in a shell loop), medians of 15.
`--baseline` times another checkout of wsideid (say, the commit before a change) in the same
rounds, interleaved with this one, so that before and after share the disk's mood.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import cycle
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
TILE = 240


def make_big_ndpi(path: Path, size_gb: float) -> Path:
    from fixtures.ndpi import NdpiSpec, write_ndpi

    return write_ndpi(path, NdpiSpec(width=4096, height=3072, levels=3,
                                     hole=int(size_gb * (1 << 30))))


def make_big_ome(path: Path, size_gb: float) -> Path:
    """Pyramidal OME-TIFF (SubIFDs) of repeated tiles, with label and macro Images."""
    from fixtures.ometiff import ome_xml

    rng = np.random.default_rng(0)
    tile = 512
    tiles = [imagecodecs.jpeg8_encode(rng.integers(0, 255, (tile, tile, 3), dtype=np.uint8), level=80)
             for _ in range(8)]
    mean = sum(map(len, tiles)) / len(tiles)
    side = int((size_gb * (1 << 30) / mean) ** 0.5) * tile
    common = {"photometric": "rgb", "metadata": None, "software": False}

    def level(w: int, **kw) -> None:
        n = ((w + tile - 1) // tile) ** 2
        src = cycle(tiles)
        tw.write((next(src) for _ in range(n)), shape=(w, w, 3), dtype=np.uint8,
                 tile=(tile, tile), compression=7, **common, **kw)

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level(side, subifds=2, description=ome_xml(side, side))
        level(side // 4, subfiletype=1)
        level(side // 16, subfiletype=1)
        tw.write(np.full((200, 300, 3), 90, np.uint8), compression="lzw", **common)
        tw.write(np.full((300, 800, 3), 60, np.uint8), compression="jpeg", **common)
    return path


def make_big_dicom(path: Path, size_gb: float) -> Path:
    """A DICOM WSI series folder: one VOLUME instance of repeated 256x256 JPEG frames, built
    from the openslide-boxes header (its identifiers included), written in a streaming way."""
    import struct

    import pydicom

    src = ROOT.parent / "shared" / "slides" / "dicom" / "openslide-boxes" / "boxes_0.dcm"
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    rng = np.random.default_rng(0)
    tile = 256
    frames = [imagecodecs.jpeg8_encode(rng.integers(0, 255, (tile, tile, 3), dtype=np.uint8),
                                       level=80, colorspace="rgb", outcolorspace="ycbcr")
              for _ in range(8)]
    frames = [f + b"\x00" * (len(f) % 2) for f in frames]
    per_side = int((size_gb * (1 << 30) / (sum(map(len, frames)) / len(frames))) ** 0.5)
    n = per_side * per_side
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixColumns = ds.TotalPixelMatrixRows = per_side * tile
    ds.NumberOfFrames = n
    ds.DimensionOrganizationType = "TILED_FULL"
    path.mkdir(parents=True, exist_ok=True)
    out = path / "volume.dcm"
    ds.save_as(out, enforce_file_format=True)
    with open(out, "ab") as fh:
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        for i in range(n):
            f = frames[i % len(frames)]
            fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(f)) + f)
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return path


def make_big_mrxs(path: Path, size_gb: float) -> Path:
    """A folder holding slide.mrxs and slide/ (what `cp -r` copies): ~1 GB of JPEG images in
    four data files, 6 zoom levels, label, macro, preview, overview and positions."""
    from fixtures.images import pattern
    from fixtures.mrxs import MrxsSpec, jpeg, write_mrxs

    tile_bytes = len(jpeg(pattern(512, 512, 1), 95))
    side = max(8, int((size_gb * (1 << 30) / tile_bytes * 3 / 4) ** 0.5))
    path.mkdir(parents=True, exist_ok=True)
    write_mrxs(path / MRXS_SLIDE, MrxsSpec(images_x=side, images_y=side, image_size=512, levels=6,
                                           data_files=4, quality=95, distinct_tiles=64))
    return path


def make_big_lossless(path: Path, size_gb: float, compression: int) -> Path:
    """Tiled Aperio SVS whose levels are LZW (5) or Deflate (8) tiles cut from the real CMU-1
    slide's pixels (a stain's real compressibility: LZW about 0.5, Deflate about 0.35), a
    handful repeated, at 1, 1/4 and 1/16."""
    import openslide

    with openslide.OpenSlide(str(ROOT.parent / "shared" / "slides" / "svs" / "CMU-1-Small-Region.svs")) as s:
        pixels = np.asarray(s.read_region((0, 0), 0, (2048, 1024)))[..., :3]
    tile = 256
    encode = (lambda t: imagecodecs.lzw_encode(t.tobytes())) if compression == 5 else (
        lambda t: imagecodecs.zlib_encode(t.tobytes(), level=6))
    tiles = [encode(np.ascontiguousarray(pixels[y:y + tile, x:x + tile]))
             for y in (0, 512) for x in range(0, 2048, 512)]
    mean = sum(map(len, tiles)) / len(tiles)
    per_side = int((size_gb * (1 << 30) / mean / 1.07) ** 0.5)
    side = per_side * tile
    name = "LZW" if compression == 5 else "Deflate"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for down in (1, 4, 16):
            w = side // down
            n = ((w + tile - 1) // tile) ** 2
            src = cycle(tiles)
            desc = (f"Aperio Image Library v12.0.5\r\n{side}x{side} [0,0 {side}x{side}] ({tile}x{tile}) "
                    f"{name}|AppMag = 40|MPP = 0.2520" if down == 1 else
                    f"Aperio Image Library v12.0.5\r\n{side}x{side} -> {w}x{w}")
            tw.write((next(src) for _ in range(n)), shape=(w, w, 3), dtype=np.uint8,
                     tile=(tile, tile), compression=compression, photometric="rgb",
                     description=desc, metadata=None, software=False)
    return path


MRXS_SLIDE = "slide.mrxs"
CASES = {  # name: (generator, file name, default size in GB)
    "svs": (None, "big.svs", 2.0),
    "ndpi": (make_big_ndpi, "big.ndpi", 5.0),
    "ome": (make_big_ome, "big.ome.tif", 1.0),
    "dicom": (make_big_dicom, "big-dicom", 2.0),
    "mrxs": (make_big_mrxs, "big-mrxs", 1.0),
    "lzw": (lambda p, gb: make_big_lossless(p, gb, 5), "big-lzw.svs", 1.0),
    "deflate": (lambda p, gb: make_big_lossless(p, gb, 8), "big-deflate.svs", 1.0),
}


def make_big_svs(path: Path, size_gb: float) -> Path:
    """Tiled JPEG SVS of about `size_gb`: a handful of encoded tiles repeated."""
    rng = np.random.default_rng(0)
    tiles = [imagecodecs.jpeg8_encode(rng.integers(0, 255, (TILE, TILE, 3), dtype=np.uint8), level=80)
             for _ in range(8)]
    mean = sum(map(len, tiles)) / len(tiles)
    per_side = int((size_gb * (1 << 30) / mean) ** 0.5)
    width = height = per_side * TILE
    desc = (f"Aperio Image Library v12.0.5\r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) "
            f"JPEG/RGB Q=80|AppMag = 40|MPP = 0.2520|ScanScope ID = SS-BENCH-1|Filename = BENCH-CASE-1"
            f"|Date = 03/14/21|Time = 13:37:42|User = bench-user")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        def level(w: int, h: int, d: str) -> None:
            n = ((w + TILE - 1) // TILE) * ((h + TILE - 1) // TILE)
            src = cycle(tiles)
            tw.write((next(src) for _ in range(n)), shape=(h, w, 3), dtype=np.uint8,
                     tile=(TILE, TILE), compression=7, photometric="rgb", description=d,
                     metadata=None, software=False, extratags=[(315, "s", 0, "bench-artist", True)])
        level(width, height, desc)
        thumb = np.zeros((768, 768, 3), np.uint8)
        tw.write(thumb, compression="jpeg", photometric="rgb", rowsperstrip=16, metadata=None,
                 description=f"Aperio Image Library v12.0.5\n{width}x{height} -> 768x768 - |AppMag = 40")
        level(width // 4, height // 4, f"Aperio Image Library v12.0.5\r\n{width}x{height} -> {width // 4}x{height // 4}")
        level(width // 16, height // 16, f"Aperio Image Library v12.0.5\r\n{width}x{height} -> {width // 16}x{height // 16}")
        tw.write(np.full((400, 600, 3), 200, np.uint8), compression="lzw", photometric="rgb",
                 subfiletype=1, metadata=None, description="Aperio Image Library v12.0.5\nlabel 600x400")
        tw.write(np.full((500, 1500, 3), 120, np.uint8), compression="jpeg", photometric="rgb",
                 subfiletype=9, metadata=None, description="Aperio Image Library v12.0.5\nmacro 1500x500")
    return path


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command. The RSS comes from GNU time: a forked
    child's ru_maxrss would include this (large) benchmark process as it was before exec."""
    gnu_time = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r") as rss_file:
        start = time.perf_counter()
        proc = subprocess.run([gnu_time, "-f", "%M", "-o", rss_file.name, *cmd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"failed: {cmd}: {proc.stderr.decode()}")
        return elapsed, int(rss_file.read().strip().splitlines()[-1]) * 1024


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _blocks(path: Path) -> int:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_blocks * 512 for p in files)


def compile_package(root: Path = ROOT) -> None:
    """Byte-compile wsideid as `pip install` does for a wheel: a checkout run with
    PYTHONDONTWRITEBYTECODE would otherwise compile every module in every process timed."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "wsideid")],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ,
                                                               "PYTHONDONTWRITEBYTECODE": ""})


def drop_caches() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def cp_fsync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def wsideid_command(checkout: Path) -> tuple[list[str], Path]:
    """How to run the wsideid of a checkout: `python -m wsideid` from inside it (its own
    package comes first on the path), with the checkout's own .venv when it has one."""
    python = checkout / ".venv" / "bin" / "python"
    return [str(python) if python.exists() else sys.executable, "-m", "wsideid"], checkout


def timed_in(cmd: list[str], cwd: Path) -> tuple[float, int]:
    here = os.getcwd()
    os.chdir(cwd)
    try:
        return timed(cmd)
    finally:
        os.chdir(here)


def bench_startup(rounds: int, baseline: Path | None) -> list[str]:
    """Start-up: the command line alone, and a tiny slide end to end."""
    from fixtures.svs import SvsSpec, write_svs

    tiny = OUT / "tiny.svs"
    write_svs(tiny, SvsSpec(width=512, height=512, tile=256, levels=1, label=False, macro=False))
    variants = [("this", ROOT)] + ([("baseline", baseline)] if baseline else [])
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(max(15, rounds)):
        for label, checkout in variants:
            cmd, cwd = wsideid_command(checkout)
            if label == "this":
                times.setdefault((label, "version"), []).append(timed_in(cmd + ["--version"], cwd)[0])
            shutil.rmtree(OUT / "tiny-out", ignore_errors=True)
            t, _ = timed_in(cmd + ["deid", str(tiny), "-o", str(OUT / "tiny-out")], cwd)
            times.setdefault((label, "tiny"), []).append(t)
    shutil.rmtree(OUT / "tiny-out", ignore_errors=True)
    med = statistics.median
    lines = [f"[startup] medians of {max(15, rounds)}, page cache warm"]
    for (label, what), xs in times.items():
        name = "wsideid --version" if what == "version" else "deid of an 80 KB SVS"
        lines.append(f"  {label}: {name} {med(xs):.3f} s (range {min(xs):.3f}-{max(xs):.3f})")
    return lines


def bench_case(name: str, size_gb: float | None, rounds: int, baseline: Path | None = None) -> list[str]:
    make, file_name, default_gb = CASES[name]
    make = make or make_big_svs
    size_gb = size_gb or default_gb
    big = OUT / file_name
    if not big.exists() or abs(_size(big) / (1 << 30) - size_gb) > 0.3:
        t0 = time.perf_counter()
        make(big, size_gb)
        print(f"generated {big} ({_size(big) / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s")
    size = _size(big)
    folder = big.is_dir()
    wsideid = [sys.executable, "-m", "wsideid"]
    suffix = "".join(big.suffixes)
    cp_times, cp_sync_times, deid_times, deid_rss = [], [], [], []
    base_times: list[float] = []
    base_inplace: list[float] = []

    def settle() -> None:
        """Remove earlier copies, flush, and (as root) empty the page cache: every run starts
        cold, as a slide fresh from the scanner archive does, and pays only its own writeback."""
        for p in OUT.glob("copy*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        os.sync()
        drop_caches()

    for _ in range(rounds):
        settle()
        t, _ = timed(["cp", "-r", str(big), str(OUT / f"copy{suffix}")])
        cp_times.append(t)
        settle()
        t0 = time.perf_counter()
        if folder:
            shutil.copytree(big, OUT / "copy-sync")
            for p in (OUT / "copy-sync").rglob("*"):
                fd = os.open(p, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        else:
            cp_fsync(big, OUT / f"copy-sync{suffix}")
        cp_sync_times.append(time.perf_counter() - t0)
        settle()
        slide = big / MRXS_SLIDE if name == "mrxs" else big
        t, rss = timed(wsideid + ["deid", str(slide), "-o", str(OUT / "copy-deid")])
        deid_times.append(t)
        deid_rss.append(rss)
        if baseline is not None:
            settle()
            cmd, cwd = wsideid_command(baseline)
            base_times.append(timed_in(cmd + ["deid", str(slide), "-o", str(OUT / "copy-base")], cwd)[0])
    settle()

    # In place: the work itself (after imports), and the whole command.
    from wsideid.containers.output import Target
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.pipeline import Settings, run
    from wsideid.policy import Policy

    inplace_work, inplace_cmd, inplace_rss = [], [], []
    for _ in range(rounds if name == "mrxs" else 0):  # the command only; DICOM has no in-place mode
        work = OUT / "inplace-mrxs"
        shutil.copytree(big, work)
        os.sync()
        drop_caches()
        t, rss = timed(wsideid + ["deid", str(work / MRXS_SLIDE), "--in-place"])
        inplace_cmd.append(t)
        inplace_rss.append(rss)
        shutil.rmtree(work)
    for _ in range(0 if folder else rounds):
        target = OUT / f"inplace{suffix}"
        cp_fsync(big, target)  # flushed first, so the timed fsync only covers our own writes
        os.sync()
        drop_caches()
        t0 = time.perf_counter()
        job = Job((target,), {"svs": "aperio-svs", "ndpi": "hamamatsu-ndpi", "ome": "ome-tiff",
                              "lzw": "aperio-svs", "deflate": "aperio-svs"}[name])
        result = run(job, Settings(Policy(), Keyring(b"bench-key-0123456789"), Target(None)))
        inplace_work.append(time.perf_counter() - t0)
        result.output.unlink()
        cp_fsync(big, target)
        os.sync()
        drop_caches()
        t, rss = timed(wsideid + ["deid", str(target), "--in-place"])
        inplace_cmd.append(t)
        inplace_rss.append(rss)
        for p in OUT.glob("wsi-*"):
            p.unlink()
        if baseline is not None:
            cp_fsync(big, target)
            os.sync()
            drop_caches()
            cmd, cwd = wsideid_command(baseline)
            base_inplace.append(timed_in(cmd + ["deid", str(target), "--in-place"], cwd)[0])
            for p in OUT.glob("wsi-*"):
                p.unlink()

    med = statistics.median

    def fmt(xs: list[float]) -> str:
        return " ".join(f"{x:.2f}" for x in xs)

    if folder:
        inplace_work = [0.0]
        inplace_cmd = inplace_cmd or [0.0]
        inplace_rss = inplace_rss or [0]
    before = ([f"  baseline ({baseline}): samples {fmt(base_times)}; median {med(base_times):.2f} s: "
               f"ratio to cp {med(base_times) / med(cp_times):.2f}, to cp+fsync "
               f"{med(base_times) / med(cp_sync_times):.2f}; this / baseline "
               f"{med(deid_times) / med(base_times):.2f}"] if base_times else [])
    if base_inplace:
        before.append(f"  baseline in place: samples {fmt(base_inplace)}; median "
                      f"{med(base_inplace):.2f} s; this / baseline "
                      f"{med(inplace_cmd) / med(base_inplace):.2f}")
    return [
        f"[{name}] {size / 1e9:.2f} GB ({_blocks(big) / 1e9:.2f} GB on disk), "
        f"rounds: {rounds} (medians), page cache "
        f"{'emptied before every run' if drop_caches() else 'warm (not root)'}",
        f"  samples cp {fmt(cp_times)} | cp+fsync {fmt(cp_sync_times)} | deid {fmt(deid_times)} | "
        f"in place {fmt(inplace_work)}",
        f"  cp {med(cp_times):.2f} s | cp+fsync {med(cp_sync_times):.2f} s | "
        f"wsideid deid -o {med(deid_times):.2f} s: ratio to cp {med(deid_times) / med(cp_times):.2f}, "
        f"to cp+fsync {med(deid_times) / med(cp_sync_times):.2f}; peak RSS {max(deid_rss) / 1e6:.0f} MB",
        f"  in place: {med(inplace_work) * 1000:.0f} ms of work, {med(inplace_cmd):.2f} s for the "
        f"command (with Python start-up); peak RSS {max(inplace_rss) / 1e6:.0f} MB",
    ] + before


def bench_convert(rounds: int, baseline: Path | None = None) -> list[str]:
    """`wsideid convert --to dicom` of the 2 GB SVS against plain wsidicomizer on the same file
    (tiles copied, no de-identification), both in new processes, cold page cache."""
    big = OUT / "big.svs"
    if not big.exists():
        make_big_svs(big, 2.0)
    plain = [sys.executable, "-c",
             "import sys; from wsidicomizer import WsiDicomizer; "
             "WsiDicomizer.convert(sys.argv[1], sys.argv[2], workers=1)",
             str(big), str(OUT / "plain-dicom")]
    ours = [sys.executable, "-m", "wsideid", "convert", str(big), "--to", "dicom", "-o",
            str(OUT / "ours-dicom")]
    runs = [(plain, ROOT, [], []), (ours, ROOT, [], [])]
    if baseline is not None:
        runs.append((ours, baseline, [], []))
    for _ in range(rounds):
        for cmd, cwd, times, rss in runs:
            for p in ("plain-dicom", "ours-dicom"):
                shutil.rmtree(OUT / p, ignore_errors=True)
            (OUT / "plain-dicom").mkdir()
            os.sync()
            drop_caches()
            t, r = timed_in(cmd, cwd)
            times.append(t)
            rss.append(r)
    for p in ("plain-dicom", "ours-dicom"):
        shutil.rmtree(OUT / p, ignore_errors=True)
    med = statistics.median
    (_, _, plain_t, plain_rss), (_, _, ours_t, ours_rss) = runs[:2]
    lines = [f"[convert] {big.stat().st_size / 1e9:.2f} GB SVS to DICOM, rounds: {rounds} (medians)",
             f"  wsidicomizer {med(plain_t):.2f} s (peak RSS {max(plain_rss) / 1e6:.0f} MB) | wsideid convert "
             f"{med(ours_t):.2f} s (peak RSS {max(ours_rss) / 1e6:.0f} MB): ratio {med(ours_t) / med(plain_t):.2f}"]
    if baseline is not None:
        base_t = runs[2][2]
        lines.append(f"  baseline convert {med(base_t):.2f} s: ratio {med(base_t) / med(plain_t):.2f}; "
                     f"this / baseline {med(ours_t) / med(base_t):.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=[*CASES, "convert", "startup", "all"], default="all")
    parser.add_argument("--size-gb", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of wsideid, timed in the same rounds")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    compile_package()
    if args.baseline is not None:
        compile_package(args.baseline)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}, {platform.platform()}"]
    for name in (["startup", *CASES, "convert"] if args.case == "all" else [args.case]):
        if name == "convert":
            found = bench_convert(args.rounds, args.baseline)
        elif name == "startup":
            found = bench_startup(args.rounds, args.baseline)
        else:
            found = bench_case(name, args.size_gb, args.rounds, args.baseline)
        lines += found
        print("\n".join(found), flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
