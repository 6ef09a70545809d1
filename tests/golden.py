"""Golden outputs: what the tool does today, pinned, so that a refactor can show it changed
nothing (or name what it changed on purpose).

For every case (a generated slide of every fixture format and option, every real slide of
../shared/slides, conversion and in-place runs), under a fixed key: the exit code, stderr,
the sha256 of every output file and path, the audit report (its run time removed) and
`inspect --json` of the input. `tests/test_golden.py` compares; after a deliberate change:

    .venv/bin/python tests/golden.py --update [CASE ...]

and name the change in the commit.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "slides"
GOLDEN = ROOT / "tests" / "golden"
KEY = "golden-key-0123456789abcdef0123456789abcdef"
sys.path.insert(0, str(ROOT))


@dataclass
class Case:
    name: str
    make: Callable[[Path], list[Path]]      # writes the input(s) into a folder, returns them
    options: tuple[str, ...] = ()
    command: str = "deid"                   # deid | in-place | convert
    inspect: bool = True


def _fixture(module: str, filename: str, *flags: str) -> Callable[[Path], list[Path]]:
    def make(folder: Path) -> list[Path]:
        out = folder / filename
        subprocess.run([sys.executable, "-m", f"fixtures.{module}", str(out), *flags], cwd=ROOT,
                       check=True, capture_output=True)
        return [out]
    return make


def _mrxs_png(folder: Path) -> list[Path]:
    from fixtures.mrxs import MrxsSpec, write_mrxs

    return [write_mrxs(folder / "S26-MRXSPNG-0815.mrxs",
                       MrxsSpec(image_format="PNG", divisions=2, overlap=8, stitching=True))]


def _generic_tiff(folder: Path) -> list[Path]:
    import numpy as np
    import tifffile

    from fixtures.images import pattern

    out = folder / "S26-GENERIC-4711.tif"
    with tifffile.TiffWriter(out) as tw:
        tw.write(pattern(512, 768, 1), tile=(128, 128), compression="jpeg", photometric="rgb",
                 software=False, description="Patient Jane Roe S26-GENERIC-4711",
                 extratags=[(315, "s", 0, "Dr. Who", True)])
        tw.write(pattern(128, 192, 2), tile=(64, 64), compression="zlib", photometric="rgb",
                 software=False, subfiletype=1)
        tw.write(np.full((40, 60, 3), 200, np.uint8), photometric="rgb", software=False,
                 subfiletype=1, description="label S26-GENERIC-4711")
    return [out]


def _real(rel: str) -> Callable[[Path], list[Path]]:
    def make(folder: Path) -> list[Path]:
        src = SHARED / rel
        files = sorted(src.glob("*.dcm")) if src.is_dir() else [src]
        out = []
        for f in files:
            shutil.copy(f, folder / f.name)
            out.append(folder / f.name)
        return out
    return make


SVS = ("svs", "S26-PLANT-4711.svs")
CASES = [
    Case("svs", _fixture(*SVS)),
    Case("svs-bigtiff", _fixture(*SVS, "--bigtiff")),
    Case("svs-big-endian", _fixture(*SVS, "--big-endian")),
    Case("svs-gt450", _fixture(*SVS, "--gt450")),
    Case("svs-j2k", _fixture(*SVS, "--j2k")),
    Case("svs-relaxed", _fixture(*SVS), ("--dates", "shift", "--label", "keep", "--macro", "keep", "--no-ocr",
                                          "--keep-device-id")),
    Case("svs-keep-year", _fixture(*SVS), ("--dates", "keep-year")),
    Case("svs-in-place", _fixture(*SVS), command="in-place", inspect=False),
    Case("ndpi", _fixture("ndpi", "NDPI-REF-HS26.ndpi")),
    Case("ndpi-relaxed", _fixture("ndpi", "NDPI-REF-HS26.ndpi"),
         ("--dates", "shift", "--macro", "keep", "--no-ocr", "--keep-device-id")),
    Case("ome", _fixture("ometiff", "S26-OMEPLANT-4711.ome.tif")),
    Case("ome-relaxed", _fixture("ometiff", "S26-OMEPLANT-4711.ome.tif"),
         ("--dates", "shift", "--label", "keep", "--macro", "keep", "--no-ocr", "--keep-device-id")),
    Case("generic-tiff", _generic_tiff),
    Case("mrxs", _fixture("mrxs", "S26-MRXSPLANT-0815.mrxs")),
    Case("mrxs-relaxed", _fixture("mrxs", "S26-MRXSPLANT-0815.mrxs"),
         ("--dates", "shift", "--label", "keep", "--macro", "keep", "--no-ocr", "--keep-device-id")),
    Case("mrxs-png-overlap", _mrxs_png),
    Case("mrxs-in-place", _fixture("mrxs", "S26-MRXSPLANT-0815.mrxs"), command="in-place",
         inspect=False),
    Case("real-svs-cmu1", _real("svs/CMU-1-Small-Region.svs")),
    Case("real-svs-cmu1-relaxed", _real("svs/CMU-1-Small-Region.svs"),
         ("--dates", "shift", "--label", "keep", "--macro", "keep", "--no-ocr", "--keep-device-id")),
    Case("real-svs-tcga-j2k", _real("svs/tcga-cr-7395-01a-01-ts1.svs")),
    Case("real-ndpi", _real("ndpi/test3-DAPI-2-387.ndpi")),
    Case("real-ndpi-relaxed", _real("ndpi/test3-DAPI-2-387.ndpi"),
         ("--dates", "shift", "--macro", "keep", "--no-ocr", "--keep-device-id")),
    Case("real-ome", _real("ometiff/OS-2-ndpi.ome.tif")),
    Case("real-dicom-highdicom", _real("dicom/highdicom-sm")),
    Case("real-dicom-highdicom-options", _real("dicom/highdicom-sm"),
         ("--dates", "shift", "--keep-device-id", "--retain-institution",
          "--retain-patient-characteristics", "--clean-descriptors")),
    Case("real-dicom-gcp-j2k", _real("dicom/gcp-jpeg2000-volume")),
    Case("real-dicom-gcp-label", _real("dicom/gcp-label-datamatrix"), ("--label", "keep")),
    Case("real-dicom-boxes", _real("dicom/openslide-boxes")),
    Case("real-dicom-boxes-retain-uids", _real("dicom/openslide-boxes"), ("--retain-uids",)),
    Case("convert-svs", _fixture(*SVS), command="convert", inspect=False),
    Case("convert-real-cmu1", _real("svs/CMU-1-Small-Region.svs"), command="convert",
         inspect=False),
]


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WSIDEID_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "wsideid", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _normal(text: str, work: Path) -> str:
    return text.replace(str(work), "<work>")


def _tree(folder: Path, work: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        rel = str(path.relative_to(folder))
        if rel == ".wsideid/run":          # the id of the run that last held the folder
            out[rel] = "run id"
            continue
        if rel == ".wsideid/journal.jsonl":   # slide records without run ids, times and mtimes
            records = []
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("type") != "slide":
                    continue
                record.pop("run")
                record.pop("state")
                record.pop("stamp", None)   # a keyed digest of the input files' times
                record.pop("job")        # a keyed digest of the input paths (a temporary folder)
                record["outputs"] = [o[:2] for o in record["outputs"]]
                records.append(record)
            out[rel] = "journal:" + hashlib.sha256(
                _normal(json.dumps(records, sort_keys=True), work).encode()).hexdigest()
            continue
        if path.name == "wsideid-report.json":
            report = json.loads(path.read_text())
            report.pop("run", None)
            out[rel] = "report:" + hashlib.sha256(
                _normal(json.dumps(report, sort_keys=True), work).encode()).hexdigest()
        else:
            out[rel] = _sha(path)
    return out


def produce(case: Case, work: Path) -> dict:
    """Run one case in `work` (an empty folder) and describe what it produced."""
    inputs_dir = work / "in"
    inputs_dir.mkdir()
    inputs = case.make(inputs_dir)
    key_file = work / "secret.key"
    key_file.write_text(KEY)
    result: dict = {}
    if case.inspect:
        proc = _cli("inspect", inputs[0], "--json", *_inspect_options(case.options), cwd=work)
        result["inspect_exit"] = proc.returncode
        doc = json.loads(proc.stdout) if proc.returncode == 0 else {}
        doc.pop("file", None)
        result["inspect"] = doc
    out = work / "out"
    if case.command == "in-place":
        proc = _cli("deid", *inputs, "--in-place", "--key-file", key_file,
                    "--report", work / "wsideid-report.json", *case.options, cwd=work)
        produced = inputs_dir
        report = work / "wsideid-report.json"
    elif case.command == "convert":
        proc = _cli("convert", *inputs, "--to", "dicom", "-o", out, "--key-file", key_file,
                    *case.options, cwd=work)
        produced, report = out, None
    else:
        proc = _cli("deid", *inputs, "-o", out, "--key-file", key_file, *case.options, cwd=work)
        produced, report = out, None
    result["exit"] = proc.returncode
    result["stderr"] = _normal(proc.stderr, work).splitlines()
    result["files"] = _tree(produced, work) if produced.exists() else {}
    if report is not None and report.exists():
        result["files"]["<report>"] = _tree(work, work).get("wsideid-report.json")
    return result


def _inspect_options(options: tuple[str, ...]) -> list[str]:
    """inspect takes the options that change planning of TIFF and MIRAX slides."""
    keep = {"--dates": 1, "--label": 1, "--macro": 1, "--keep-device-id": 0, "--no-ocr": 0}
    out, i = [], 0
    while i < len(options):
        n = keep.get(options[i])
        if n is None:
            i += 1
            continue
        out += list(options[i:i + 1 + n])
        i += 1 + n
    return out


def golden_path(case: Case) -> Path:
    return GOLDEN / f"{case.name}.json"


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description="Write the golden outputs of tests/test_golden.py.")
    parser.add_argument("--update", action="store_true", help="write tests/golden/*.json")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    GOLDEN.mkdir(exist_ok=True)
    for case in CASES:
        if args.cases and case.name not in args.cases:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = produce(case, Path(tmp))
        text = json.dumps(result, indent=1, sort_keys=True) + "\n"
        if args.update:
            golden_path(case).write_text(text)
        print(f"{case.name}: exit {result['exit']}, {len(result['files'])} files")


if __name__ == "__main__":
    main()
