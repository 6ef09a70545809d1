"""Batch benchmark: an export tree of 40 generated slides of about 100 MB (10 cases of an SVS,
an OME-TIFF, a MIRAX slide and a DICOM series each), de-identified with `--jobs 1` and
`--jobs 2`, against `cp -r` and `cp -r` + `sync` of the same tree, and a copy that fsyncs
every file before the next (as wsideid must, before it records a slide as released), in the
same run.

    python bench/batch.py [--slides 40] [--size-mb 100] [--rounds 3] [--floor]

Every timed command runs in a new process; as root the page cache is emptied before each
(every run reads its input from disk), and the four variants are interleaved round by round,
so that they share the disk's mood. Prints the samples, medians and ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
from itertools import cycle
from pathlib import Path

import imagecodecs
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from run import compile_package, drop_caches, make_big_mrxs, make_big_ome, make_big_svs  # noqa: E402

OUT = ROOT / "bench" / "out"
TREE = OUT / "batch-tree"
KEY = "bench-batch-key-0123456789abcdef"
FORMATS = ("svs", "ome", "mrxs", "dicom")


def make_dicom(folder: Path, size_gb: float, n: int) -> Path:
    """A DICOM WSI series (one VOLUME instance of repeated 256x256 JPEG frames) from the
    openslide-boxes header, under UIDs of its own (every series is a slide of its own)."""
    import pydicom
    from pydicom.uid import generate_uid

    src = ROOT.parent / "shared" / "slides" / "dicom" / "openslide-boxes" / "boxes_0.dcm"
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    for attr in ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID"):
        setattr(ds, attr, generate_uid(entropy_srcs=[str(ds[attr].value), f"bench-{n}"]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    rng = np.random.default_rng(n)
    tile = 256
    frames = [imagecodecs.jpeg8_encode(rng.integers(0, 255, (tile, tile, 3), dtype=np.uint8),
                                       level=80, colorspace="rgb", outcolorspace="ycbcr")
              for _ in range(8)]
    frames = [f + b"\x00" * (len(f) % 2) for f in frames]
    per_side = int((size_gb * (1 << 30) / (sum(map(len, frames)) / len(frames))) ** 0.5)
    count = per_side * per_side
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixColumns = ds.TotalPixelMatrixRows = per_side * tile
    ds.NumberOfFrames = count
    ds.DimensionOrganizationType = "TILED_FULL"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "IM0001.dcm"
    ds.save_as(out, enforce_file_format=True)
    with open(out, "ab") as fh:
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        for i, f in zip(range(count), cycle(frames)):
            fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(f)) + f)
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return folder


def make_tree(slides: int, size_mb: float) -> None:
    """Cases CASE-000.. of four slides each, sizes varied a little so that every slide is
    distinct (its own pseudonym)."""
    if TREE.exists():
        shutil.rmtree(TREE)
    for n in range(slides):
        case = TREE / f"CASE-{n // 4:03d}"
        case.mkdir(parents=True, exist_ok=True)
        size_gb = size_mb * (1 + n / 400) / 1024
        kind = FORMATS[n % 4]
        if kind == "svs":
            make_big_svs(case / f"slide-{n:03d}.svs", size_gb)
        elif kind == "ome":
            make_big_ome(case / f"slide-{n:03d}.ome.tif", size_gb)
        elif kind == "mrxs":
            make_big_mrxs(case / f"mrxs-{n:03d}", size_gb)   # holds slide.mrxs and slide/
            for p in (case / f"mrxs-{n:03d}").iterdir():
                p.rename(case / (p.name.replace("slide", f"slide-{n:03d}")))
            (case / f"mrxs-{n:03d}").rmdir()
        else:
            make_dicom(case / f"series-{n:03d}", size_gb, n)


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Wall time of `cmd`, run from bench/out: `python -m` puts the working folder first on
    the path, so a run from a checkout's root would import that checkout's package whatever
    PYTHONPATH says (the baseline would be this code)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          cwd=OUT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {cmd}: {proc.stderr.decode()[-2000:]}")
    return elapsed


def copy_fsync_each(src: Path, dst: Path) -> None:
    """A copy that, like wsideid, makes every file durable before going on to the next."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=40)
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-tree", action="store_true", help="reuse bench/out/batch-tree")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of wsideid: its `deid --jobs 2` is timed in the "
                             "same rounds (run by this interpreter, its package first on the path)")
    parser.add_argument("--floor", action="store_true",
                        help="also time `deid --jobs 2` with the barcode search, and with every "
                             "check, switched off (bench/checks_off: what the checks cost)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not (args.keep_tree and TREE.exists()):
        t0 = time.perf_counter()
        make_tree(args.slides, args.size_mb)
        print(f"generated {args.slides} slides, {tree_size(TREE) / 1e9:.2f} GB in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    size = tree_size(TREE)
    compile_package()
    env = {**os.environ, "WSIDEID_KEY": KEY, "PYTHONPATH": str(ROOT)}
    dest = OUT / "batch-copy"
    wsideid = [sys.executable, "-m", "wsideid", "deid", str(TREE), "-o", str(dest)]
    variants = {
        "cp -r": lambda: timed(["cp", "-r", str(TREE), str(dest)]),
        "cp -r + sync": lambda: timed(["sh", "-c", f"cp -r '{TREE}' '{dest}' && sync"]),
        "copy + fsync each": lambda: timed([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                                            "from batch import copy_fsync_each; from pathlib import Path; "
                                            "copy_fsync_each(Path(sys.argv[2]), Path(sys.argv[3]))",
                                            str(ROOT / "bench"), str(TREE), str(dest)]),
        "deid --jobs 1": lambda: timed(wsideid + ["--jobs", "1"], env),
        "deid --jobs 2": lambda: timed(wsideid + ["--jobs", "2"], env),
    }
    if args.baseline is not None:
        compile_package(args.baseline)
        variants["baseline --jobs 2"] = lambda: timed(
            wsideid + ["--jobs", "2"], {**env, "PYTHONPATH": str(args.baseline.resolve())})
    if args.floor:
        harness = {**env, "PYTHONPATH": f"{ROOT / 'bench' / 'checks_off'}{os.pathsep}{ROOT}"}
        variants["no barcode search"] = lambda: timed(
            wsideid + ["--jobs", "2"], {**harness, "WSIDEID_BENCH_SKIP": "barcodes"})
        variants["no checks"] = lambda: timed(
            wsideid + ["--jobs", "2"], {**harness, "WSIDEID_BENCH_SKIP": "barcodes,verify,reader"})
    samples: dict[str, list[float]] = {name: [] for name in variants}
    cold = True
    for r in range(args.rounds):
        for name, work in variants.items():
            shutil.rmtree(dest, ignore_errors=True)
            os.sync()
            cold = drop_caches() and cold
            samples[name].append(work())
            print(f"round {r + 1}: {name} {samples[name][-1]:.2f} s", flush=True)
    shutil.rmtree(dest, ignore_errors=True)
    med = {name: statistics.median(xs) for name, xs in samples.items()}
    print(f"\n[batch] {args.slides} slides, {size / 1e9:.2f} GB, {args.rounds} rounds, page cache "
          f"{'emptied before every run' if cold else 'warm (not root)'}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    for name, xs in samples.items():
        print(f"  {name:14s} median {med[name]:6.2f} s  range {min(xs):.2f}-{max(xs):.2f}  "
              f"samples {' '.join(f'{x:.2f}' for x in xs)}  {size / 1e6 / med[name]:.0f} MB/s")
    for name in ("deid --jobs 1", "deid --jobs 2", "baseline --jobs 2", "no barcode search",
                 "no checks"):
        if name not in med:
            continue
        print(f"  {name}: {med[name] / med['cp -r']:.2f}x cp -r, "
              f"{med[name] / med['cp -r + sync']:.2f}x cp -r + sync, "
              f"{med[name] / med['copy + fsync each']:.2f}x copy + fsync each")


if __name__ == "__main__":
    main()
