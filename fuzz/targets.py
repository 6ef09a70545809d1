"""Fuzz targets: each takes bytes and checks a property; a failing property raises
`Finding` (any other exception escaping a target is a finding too).

Properties (issue 14): reading raises only the reader's own input error (SlideError; the
segment cleaner's MalformedStream, the region reader's RegionError); what a parser accepts
it writes back so that it reads the same again; a slide the pipeline accepts is released
verified (the pipeline's own checks), and nothing is written outside OUTDIR.

Seeds are made from the project's fixture generators (valid slides full of planted
identifiers) and the shared DICOM slides; `seeds(name)` returns them. Used by fuzz/run.py
(atheris or a plain mutation driver, for long runs) and tests/test_fuzz.py (hypothesis, in
the suite).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DICOM_SEED = ROOT.parent / "shared" / "slides" / "dicom" / "openslide-boxes" / "boxes_0.dcm"
SCRATCH = Path(tempfile.gettempdir()) / f"wsideid-fuzz-{os.getpid()}"


class Finding(AssertionError):
    """A property does not hold."""


def _file(name: str, data: bytes) -> Path:
    SCRATCH.mkdir(exist_ok=True)
    path = SCRATCH / name
    path.write_bytes(data)
    return path


# ---- targets -----------------------------------------------------------------------------

def tiff_reader(data: bytes) -> None:
    """The TIFF reader: SlideError or a structure whose every run lies inside the file."""
    from wsideid.containers.tiff.reader import TiffFile
    from wsideid.errors import SlideError

    path = _file("in.tif", data)
    try:
        tiff = TiffFile(path)
    except SlideError:
        return
    try:
        for top in tiff.ifds:
            for ifd in top.walk():
                regions = ifd.data_regions(tiff.byteorder)
                if regions is None:
                    continue
                _, _, offs, cnts = regions
                if len(offs) and int((offs + cnts)[cnts > 0].max(initial=0)) > tiff.size:
                    raise Finding(f"{ifd.label}: a run past the end was accepted")
    except SlideError:
        pass
    finally:
        tiff.close()


def slide_plan(data: bytes) -> None:
    """Detection, reading and planning of a whole TIFF-based slide (SVS, NDPI, OME-TIFF,
    generic: the Aperio description, NDPI property and OME-XML parsers inside): SlideError
    only."""
    from wsideid import adapters
    from wsideid.errors import SlideError
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.pipeline import plan_job
    from wsideid.policy import Policy

    path = _file("in.svs", data)
    adapter = adapters.detect(path)
    if adapter is None:
        return
    try:
        plan_job(Job((path,), adapter.name), Policy(ocr=False), Keyring(b"f" * 32))
    except SlideError:
        pass


def aperio_description(data: bytes) -> None:
    """The Aperio description split and header grammar: never raise; what the header keeps
    is a prefix of each of its lines (nothing is invented)."""
    from wsideid.adapters.svs import clean_header, split_description

    text = data.decode("utf-8", "replace")
    header, pairs = split_description(text)
    kept, dropped = clean_header(header)
    if len(kept) > len(header):
        raise Finding("the cleaned header is longer than the header")
    for key, value in pairs:
        if "|" in key or (value is not None and "|" in value):
            raise Finding("a pair holds the separator")


def ndpi_properties(data: bytes) -> None:
    """The NDPI property text (tag 65449) and the barcode box it places in the macro:
    SlideError, or a text made only of input lines kept whole or dates rewritten, and boxes
    inside the picture."""
    from types import SimpleNamespace

    from wsideid.adapters.ndpi import ADAPTER, LINE, property_values
    from wsideid.errors import SlideError
    from wsideid.images.overview import ndpi_barcode_boxes
    from wsideid.policy import Policy

    text = data.decode("utf-8", "replace")
    ifd = SimpleNamespace(label="IFD 0", tags={65449: SimpleNamespace(data=data)})
    try:
        kept, _ = ADAPTER.plan_properties(SimpleNamespace(policy=Policy(ocr=False)), ifd, text)
    except SlideError:
        return
    lines = set(LINE.split(text)[::2])
    for line in LINE.split(kept)[::2]:
        if line and line not in lines and line.partition("=")[0] + "=" not in text:
            raise Finding(f"a kept line not in the input: {line[:60]!r}")
    for x0, y0, x1, y1 in ndpi_barcode_boxes(property_values(text), (300, 800, 3)):
        if not (0 <= x0 <= x1 <= 800 and 0 <= y0 <= y1 <= 300):
            raise Finding(f"a barcode box outside the macro: {(x0, y0, x1, y1)}")


def ome_xml(data: bytes) -> None:
    """The OME-XML parser (entities, DTDs and the network off): SlideError or an OME root;
    never an entity expanded, never a file read."""
    from wsideid.adapters.ometiff import parse_ome
    from wsideid.errors import SlideError

    text = data.decode("utf-8", "replace")
    try:
        parse_ome(text)
    except SlideError:
        pass


def slidedat(data: bytes) -> None:
    """Slidedat.ini: SlideError, or sections that read back the same from what is written."""
    from wsideid.containers.mirax.slidedat import Slidedat
    from wsideid.errors import SlideError

    try:
        ini = Slidedat.parse(data)
    except SlideError:
        return
    again = Slidedat.parse(ini.to_bytes())
    if again.sections != ini.sections:
        raise Finding("Slidedat.ini does not read back as written")


def index_dat(data: bytes) -> None:
    """Index.dat: SlideError, or records that read back the same from the rebuilt file."""
    from wsideid.containers.mirax.index import IndexFile
    from wsideid.errors import SlideError

    slide_id = "0123456789abcdef0123456789abcdef"
    try:
        index = IndexFile.parse(data, slide_id, 8, 4)
    except SlideError:
        return
    again = IndexFile.parse(index.to_bytes(), slide_id, 8, 4)
    pages = lambda records: [r.pages if r else None for r in records]  # noqa: E731
    if pages(again.hier) != pages(index.hier) or pages(again.nonhier) != pages(index.nonhier):
        raise Finding("Index.dat does not read back as rebuilt")


def dicom_header(data: bytes) -> None:
    """The DICOM header reader (every element parsed at any depth) and the pixel item walk:
    SlideError only."""
    from wsideid.containers.dicom.io import locate_pixels, read_header
    from wsideid.errors import SlideError

    path = _file("in.dcm", data)
    try:
        _, start = read_header(path)
        locate_pixels(path, start)
    except SlideError:
        pass


def jpeg_segments(data: bytes) -> None:
    """The JPEG segment cleaner: MalformedStream, or a stream without COM/APPn (but
    JFIF/Adobe) that the cleaner leaves as it is."""
    from wsideid.images.segments import MalformedStream, clean_jpeg

    try:
        cleaned, removed = clean_jpeg(data)
    except MalformedStream:
        return
    again, removed_again = clean_jpeg(cleaned)
    if removed_again or again != cleaned:
        raise Finding("cleaning a cleaned JPEG stream removed something more")


def geojson(data: bytes) -> None:
    """The GeoJSON region reader: RegionError only."""
    from wsideid.images.regions import RegionError, read_geojson_parts

    try:
        read_geojson_parts(data.decode("utf-8", "replace"))
    except RegionError:
        pass


def deid(data: bytes) -> None:
    """The whole pipeline on a slide file: a result (released and verified, refused, or
    failed verification), never an exception; nothing is written but under OUTDIR (and the
    input is unchanged)."""
    from wsideid import adapters, batch
    from wsideid.containers.output import Target
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.pipeline import Settings
    from wsideid.policy import Policy

    work = SCRATCH / "deid"
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    src = work / "in" / "slide.svs"
    src.write_bytes(data)
    out = work / "out"
    out.mkdir()
    adapter = adapters.detect(src)
    if adapter is None:
        return
    settings = Settings(Policy(ocr=False), Keyring(b"f" * 32), Target(out))
    result = batch.attempt(Job((src,), adapter.name), settings)
    if src.read_bytes() != data:
        raise Finding("the input changed")
    outside = sorted(p.name for p in work.iterdir()) + sorted(p.name for p in src.parent.iterdir())
    if outside != ["in", "out", "slide.svs"]:
        raise Finding(f"written outside OUTDIR: {outside}")
    made = sorted(p.name for p in out.iterdir())
    if result.status == "ok":
        if len(made) != 1 or made[0].startswith("."):
            raise Finding(f"released {made}")
    elif made:
        raise Finding(f"a {result.status} slide left {made}")


TARGETS = {f.__name__: f for f in (tiff_reader, slide_plan, aperio_description,
                                   ndpi_properties, ome_xml,
                                   slidedat, index_dat, dicom_header, jpeg_segments, geojson,
                                   deid)}


# ---- seeds --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def seeds(name: str) -> tuple[bytes, ...]:
    """Valid inputs of each target, made by the fixture generators."""
    folder = Path(tempfile.mkdtemp(prefix="wsideid-seeds-"))
    try:
        return tuple(_seeds(name, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _seeds(name: str, folder: Path) -> list[bytes]:
    from fixtures.mrxs import write_mrxs
    from fixtures.ndpi import write_ndpi
    from fixtures.ometiff import ome_xml as make_ome_xml
    from fixtures.ometiff import write_ome_tiff
    from fixtures.svs import write_svs

    if name in ("tiff_reader", "slide_plan", "deid"):
        out = [write_svs(folder / "a.svs").read_bytes()]
        if name != "deid":
            out += [write_ndpi(folder / "b.ndpi").read_bytes(),
                    write_ome_tiff(folder / "c.ome.tif").read_bytes()]
        return out
    if name == "aperio_description":
        from wsideid.containers.tiff.reader import TiffFile

        with TiffFile(write_svs(folder / "a.svs")) as tiff:
            return [tiff.ifds[0].tags[270].data]
    if name == "ndpi_properties":
        from wsideid.containers.tiff.reader import TiffFile

        with TiffFile(write_ndpi(folder / "b.ndpi")) as tiff:
            return [tiff.ifds[0].tags[65449].data]
    if name == "ome_xml":
        return [make_ome_xml(1024, 768).encode()]
    if name in ("slidedat", "index_dat"):
        path = write_mrxs(folder / "s.mrxs")
        data = (folder / "s" / ("Slidedat.ini" if name == "slidedat" else "Index.dat")).read_bytes()
        if name == "index_dat":   # the seed's own SLIDE_ID replaced by the target's
            from wsideid.containers.mirax.slidedat import Slidedat

            ini = Slidedat.parse((folder / "s" / "Slidedat.ini").read_bytes())
            old = ini.value("GENERAL", "SLIDE_ID").encode()
            data = data[:5] + b"0123456789abcdef0123456789abcdef" + data[5 + len(old):]
        del path
        return [data]
    if name == "dicom_header":
        return [DICOM_SEED.read_bytes()] if DICOM_SEED.exists() else [b"\0" * 128 + b"DICM"]
    if name == "jpeg_segments":
        import numpy as np
        from PIL import Image
        import io

        buf = io.BytesIO()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG", comment=b"S26-4711")
        return [buf.getvalue()]
    if name == "geojson":
        return [json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10],
                                                                 [0, 0]]]}}]}).encode()]
    raise KeyError(name)
