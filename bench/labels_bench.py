"""Benchmark: the whole check of one slide's label, macro and thumbnail, on real slides.

    python bench/labels_bench.py [--runs 7]

For svs/CMU-1-Small-Region.svs, ndpi/test3-DAPI-2-387.ndpi and
dicom/gcp-label-datamatrix (from ../shared/slides), under `--label replace --macro redact`:

- check: what `deid` does before planning (wsideid.associated.examine + decide): decode the
  pixels of every label, macro and thumbnail, find every barcode, OCR (second row: with OCR,
  when tesseract is installed), synthesize the new label, find and blank the overview's label
  area (which decodes the blanked picture again);
- verify: what verification does after writing (wsideid.verify.associated): the written
  slide's label, macro and thumbnail read through the users' reader (OpenSlide, wsidicom, or
  the format's adapter) and every barcode decoded again, blanked areas checked.

Each row is the median and range of `--runs` runs, after one warm-up, on one core (the process
is pinned to one CPU where the system allows). The target is under 1 s for check + verify
without OCR.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SLIDES = ROOT.parent / "shared" / "slides"
CASES = {
    "svs CMU-1-Small-Region": SLIDES / "svs" / "CMU-1-Small-Region.svs",
    "ndpi test3-DAPI-2-387": SLIDES / "ndpi" / "test3-DAPI-2-387.ndpi",
    "dicom gcp-label-datamatrix": SLIDES / "dicom" / "gcp-label-datamatrix" / "test_dicom_matrix.dcm",
}
KEY = "bench-key-0123456789abcdef0123456789abcdef"


def timed(task, runs: int) -> tuple[float, float, float]:
    """Median, min and max in milliseconds, after one warm-up run."""
    task()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        task()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), min(times), max(times)


def check_task(path: Path, ocr: bool):
    from wsideid import adapters, associated
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy

    adapter = adapters.detect(path)
    policy = Policy(label="replace", macro="redact", ocr=ocr)
    keyring = Keyring(KEY.encode())

    def task():
        slide = adapter.read(Job((path,), adapter.name))
        try:
            naming = adapter.naming(slide, keyring)
            associated.decide(adapter, slide, policy, associated.examine(adapter, slide, policy),
                              naming)
        finally:
            slide.close()
    return task


def verify_task(path: Path, work: Path):
    """Write the slide once through the command line, then time the verification's decode
    of its associated images (as the pipeline runs it, from the written files)."""
    import json

    from wsideid import adapters
    from wsideid.verify.associated import Expected, check, reader_pictures

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "wsideid", "deid", str(path), "-o", str(out),
                    "--label", "replace", "--macro", "redact", "--no-ocr"],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, "WSIDEID_KEY": KEY})
    [slide] = json.loads((out / "wsideid-report.json").read_text())["slides"]
    written = out / slide["output"]
    paths = sorted(written.glob("*.dcm")) if written.is_dir() else [written]
    adapter = adapters.detect(paths[0])
    wanted = {a["role"]: Expected(replaced="new" in a, area=a.get("blanked"))
              for a in slide.get("associated", []) if a["action"] != "drop"}

    def task():
        problems = check(reader_pictures(adapter, paths, set(wanted)), wanted, slide["pseudonym"])
        assert not problems, problems
    return task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from wsideid.images import ocr
    from wsideid.images.barcodes import PYZBAR_AVAILABLE

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {cores} used; "
          f"Python {platform.python_version()}; pyzbar {PYZBAR_AVAILABLE}; "
          f"OCR {'available' if ocr.available() else 'not installed'}; "
          f"median [min-max] of {runs} runs, ms")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in CASES.items():
            work = Path(tmp) / name.split()[0]
            work.mkdir()
            check = timed(check_task(path, ocr=False), runs)
            verify = timed(verify_task(path, work), runs)
            rows = [("check, no OCR", check), ("verify", verify),
                    ("check + verify", (check[0] + verify[0], check[1] + verify[1],
                                        check[2] + verify[2]))]
            if ocr.available():
                rows.append(("check, with OCR", timed(check_task(path, ocr=True), runs)))
            for what, (median, low, high) in rows:
                print(f"{name:28s} {what:16s} {median:8.0f}  [{low:.0f}-{high:.0f}]")


if __name__ == "__main__":
    main()
