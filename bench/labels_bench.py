"""Benchmark: barcode search and label-area redaction on the real slides' small images.

    python bench/labels_bench.py [--runs 5]

Times `decode_all` on the label, macro and thumbnail of svs/CMU-1-Small-Region.svs (together,
as the pipeline would for one slide) and on the macro of ndpi/test3-DAPI-2-387.ndpi, and
`redact_overview` on both macros; prints the median of the runs in milliseconds. The process
is pinned to one core where the system allows it. Reads the slides from ../shared/slides.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SLIDES = ROOT.parent / "shared" / "slides"

from wsideid.images.barcodes import PYZBAR_AVAILABLE, decode_all  # noqa: E402
from wsideid.images.overview import redact_overview  # noqa: E402


def svs_images() -> dict[str, np.ndarray]:
    with tifffile.TiffFile(SLIDES / "svs" / "CMU-1-Small-Region.svs") as tif:
        kinds = {}
        for page in tif.pages[1:]:
            description = page.description or ""
            kind = "label" if "label" in description else "macro" if "macro" in description \
                else "thumbnail"
            kinds[kind] = page.asarray()
        return kinds


def ndpi_macro() -> np.ndarray:
    with tifffile.TiffFile(SLIDES / "ndpi" / "test3-DAPI-2-387.ndpi") as tif:
        for page in tif.pages:
            if page.tags.get(65421) is not None and page.tags[65421].value == -1:
                return page.asarray()
    raise SystemExit("no macro in the NDPI sample")


def median_ms(task, runs: int) -> float:
    task()  # warm up: imports, first allocations
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        task()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    svs = svs_images()
    macro = ndpi_macro()
    print(f"cores used: {cores}; pyzbar: {PYZBAR_AVAILABLE}; median of {runs} runs")
    rows = [(f"decode_all svs {kind} {image.shape[1]}x{image.shape[0]}",
             lambda image=image: decode_all(image)) for kind, image in svs.items()]
    rows.append(("decode_all svs label+macro+thumbnail",
                 lambda: [decode_all(image) for image in svs.values()]))
    rows.append((f"decode_all ndpi macro {macro.shape[1]}x{macro.shape[0]}",
                 lambda: decode_all(macro)))
    rows.append(("redact_overview svs macro", lambda: redact_overview(svs["macro"])))
    rows.append(("redact_overview ndpi macro", lambda: redact_overview(macro)))
    for name, task in rows:
        print(f"{name:48s} {median_ms(task, runs):8.1f} ms")


if __name__ == "__main__":
    main()
