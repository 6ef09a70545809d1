"""What checking every byte of the kept image data costs (docs/benchmarks.md, "Screening").

    python bench/screening_bench.py real --baseline OTHER_CHECKOUT [--rounds 5]
    python bench/screening_bench.py slides --baseline OTHER_CHECKOUT SLIDE...
    python bench/screening_bench.py tiles

`real`: every slide of ../shared/slides, planned in a fresh process by this checkout and by
the baseline, interleaved (the planning alone, imports excluded: that is where the screen
runs; wall time and the CPU time of all its threads, which a busy machine disturbs less),
and the whole `deid -o` command; page cache warm (the slides are a few MB). `slides`: the
same for the slides given (the generated bench slides, say).
`tiles`: per-tile costs on 256 x 256 tiles cut from the real CMU-1 slide: the lossless checks
(LZW walk and decode, Deflate inflate, PackBits), the vectorised JPEG and J2K screens, and what
finding slack before RSTn/EOI would cost: libjpeg-turbo decoding every tile's entropy-coded
data (tjTransform without output, stopping on its "extraneous bytes" warning).
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SLIDES = ROOT.parent / "shared" / "slides"
sys.path.insert(0, str(ROOT))

REAL = ["svs/CMU-1-Small-Region.svs", "svs/tcga-cr-7395-01a-01-ts1.svs",
        "ndpi/test3-DAPI-2-387.ndpi", "ometiff/OS-2-ndpi.ome.tif", "dicom/gcp-jpeg2000-volume",
        "dicom/highdicom-sm", "dicom/openslide-boxes"]
PLAN = """
import sys, time
from pathlib import Path
from wsideid import batch
from wsideid.keyring import Keyring
from wsideid.pipeline import plan_job
from wsideid.policy import Policy
path = Path(sys.argv[1])
[job] = batch.find([path], repair=False).jobs
t0, c0 = time.perf_counter(), time.process_time()
plan_job(job, Policy(), Keyring(b"bench-key-0123456789"))
print(time.perf_counter() - t0, time.process_time() - c0)
"""


def _python(checkout: Path) -> str:
    venv = checkout / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _plan(checkout: Path, src: Path) -> tuple[float, float]:
    """(wall, CPU of all threads) seconds of planning `src` in a fresh process."""
    proc = subprocess.run([_python(checkout), "-c", PLAN, str(src)], cwd=checkout,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    wall, cpu = proc.stdout.split()[-2:]
    return float(wall), float(cpu)


def bench_real(baseline: Path, rounds: int, slides: list[Path]) -> list[str]:
    lines = [f"[plan and deid] medians of {rounds}, page cache warm; planning in process (wall "
             "and CPU of all threads), then the whole deid -o; baseline -> this"]
    for src in slides:
        plan: dict[str, list[tuple[float, float]]] = {"this": [], "baseline": []}
        command: dict[str, list[float]] = {"this": [], "baseline": []}
        for _ in range(rounds):
            for label, checkout in (("this", ROOT), ("baseline", baseline)):
                plan[label].append(_plan(checkout, src))
                with tempfile.TemporaryDirectory(dir=ROOT / "bench") as out:
                    t0 = time.perf_counter()
                    subprocess.run([_python(checkout), "-m", "wsideid", "deid", str(src), "-o", out],
                                   cwd=checkout, capture_output=True, check=True)
                    command[label].append(time.perf_counter() - t0)
        med = statistics.median

        def ms(label: str, i: int) -> float:
            return med(p[i] for p in plan[label]) * 1000

        lines.append(f"  {src.relative_to(src.parents[1])}: plan {ms('baseline', 0):.0f} -> "
                     f"{ms('this', 0):.0f} ms (CPU {ms('baseline', 1):.0f} -> {ms('this', 1):.0f}); "
                     f"deid {med(command['baseline']):.2f} -> {med(command['this']):.2f} s")
    return lines


def _tiles() -> list[np.ndarray]:
    import openslide

    with openslide.OpenSlide(str(SLIDES / "svs" / "CMU-1-Small-Region.svs")) as s:
        pixels = np.asarray(s.read_region((0, 0), 0, (2048, 2048)))[..., :3]
    return [np.ascontiguousarray(pixels[y:y + 256, x:x + 256])
            for y in range(0, 2048, 256) for x in range(0, 2048, 256)]


def _best(fn, n: int, repeat: int = 7) -> float:
    """Milliseconds per item, the best of `repeat` passes over `n` items."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out) / n * 1000


def _entropy_check(streams: list[bytes]):
    """libjpeg-turbo reading every coefficient, failing on any warning (tjTransform, no output,
    TJFLAG_STOPONWARNING): what finding bytes before RSTn/EOI outside the coded data costs."""
    from wsideid.images import turbo_coefs

    found = turbo_coefs._library()
    if found is None:
        return None
    lib = found[0]
    handle = lib.tjInitTransform()
    transform = turbo_coefs._Transform()
    transform.options = turbo_coefs.TJXOPT_NOOUTPUT
    out = ctypes.POINTER(ctypes.c_ubyte)()
    size = ctypes.c_ulong(0)

    def run() -> None:
        for data in streams:
            if lib.tjTransform(handle, data, len(data), 1, ctypes.byref(out), ctypes.byref(size),
                               ctypes.byref(transform), turbo_coefs.TJFLAG_STOPONWARNING):
                raise RuntimeError("a warning")
    return run


def bench_tiles() -> list[str]:
    import imagecodecs

    from wsideid.images import j2k, lossless, segments

    tiles = _tiles()
    n = len(tiles)
    raw = tiles[0].nbytes
    lines = [f"[tiles] {n} tiles of 256 x 256 RGB from CMU-1, ms a tile (best of 7 passes)"]
    lzw = [imagecodecs.lzw_encode(t.tobytes()) for t in tiles]
    deflate = [imagecodecs.zlib_encode(t.tobytes(), level=6) for t in tiles]
    packbits = [imagecodecs.packbits_encode(t.tobytes()) for t in tiles]
    for name, streams, clean in (("LZW", lzw, lossless.clean_lzw),
                                 ("Deflate", deflate, lossless.clean_deflate),
                                 ("PackBits", packbits, lossless.clean_packbits)):
        mean = sum(map(len, streams)) / n
        ms = _best(lambda: [clean(s, (raw, raw)) for s in streams], n)
        lines.append(f"  {name}: {mean / 1024:.0f} KB a tile, check {ms:.2f} ms "
                     f"({mean / ms / 1000:.0f} MB/s compressed)")
    lines.append(f"    LZW: walk {_best(lambda: [lossless.lzw_end(s) for s in lzw], n):.2f} ms, "
                 f"decode {_best(lambda: [imagecodecs.lzw_decode(s) for s in lzw], n):.2f} ms")
    jpegs = [imagecodecs.jpeg8_encode(t, level=80) for t in tiles]
    j2ks = [imagecodecs.jpeg2k_encode(t, level=40, codecformat="J2K") for t in tiles[:16]]
    for name, streams, screen in (("JPEG", jpegs, segments.screen_jpeg),
                                  ("J2K", j2ks, j2k.screen_j2k)):
        many = streams * max(1, 20000 // len(streams))
        buf = np.frombuffer(b"".join(many), np.uint8)
        offs = np.cumsum([0] + [len(s) for s in many[:-1]]).astype(np.int64)
        cnts = np.array([len(s) for s in many], np.int64)
        us = _best(lambda: screen(buf, offs, cnts), len(many), 3) * 1000
        lines.append(f"  {name} screen: {us:.1f} us a tile ({len(many)} tiles at once)")
    check = _entropy_check(jpegs)
    if check is not None:
        ms = _best(check, n)
        lines.append(f"  JPEG entropy-coded data decoded (libjpeg-turbo, no output): {ms:.2f} ms "
                     f"a tile, against {_best(lambda: [imagecodecs.jpeg8_decode(s) for s in jpegs], n):.2f} "
                     "ms for a full decode")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["real", "slides", "tiles"])
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("slides", nargs="*", type=Path, help="for `slides`: the slides to time")
    args = parser.parse_args()
    if args.what in ("real", "slides"):
        if args.baseline is None:
            parser.error(f"{args.what} needs --baseline")
        slides = [SLIDES / rel for rel in REAL] if args.what == "real" else args.slides
        lines = bench_real(args.baseline, args.rounds, slides)
    else:
        lines = bench_tiles()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
