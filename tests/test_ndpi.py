"""Hamamatsu NDPI end to end: synthetic (small and over 4 GB) and the real NanoZoomer slide."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import openslide
import pytest
import tifffile

from conftest import all_files, assert_rejected, deid_real_copy, found_needles, run, sha256, shared_slide
from fixtures.ndpi import HOLE, PLANTED, NdpiSpec, mcu_starts, write_ndpi

NEEDLES = list(PLANTED.values())
REAL_NEEDLES = ["950291", "950410", "2011/05/23", "2017/01/27", "2017:02:07", "test3-DAPI"]


def strips(path: Path) -> list[bytes]:
    """The JPEG of every pyramid level (SourceLens > 0), read with tifffile."""
    out = []
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ndpi
        fh = tf.filehandle
        for page in tf.pages:
            if float(page.tags[65421].value) > 0:
                # the stored strip itself (tifffile's dataoffsets split NDPI JPEGs into tiles)
                offset = page.tags["StripOffsets"].value
                count = page.tags["StripByteCounts"].value
                offset = offset[0] if isinstance(offset, tuple) else offset
                count = count[0] if isinstance(count, tuple) else count
                fh.seek(offset)
                out.append(fh.read(count))
    return out


def without_comment(jpeg: bytes, text: bytes) -> bytes:
    at = jpeg.index(text)
    return jpeg[:at - 4] + jpeg[at + len(text):]


def check_ndpi_output(src: Path, dst: Path) -> None:
    head = dst.read_bytes()[:12] if dst.stat().st_size < 1 << 30 else open(dst, "rb").read(12)
    assert head[:4] == b"II*\x00", "must stay classic-TIFF NDPI, never BigTIFF"
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(dst)) as b:
        assert b.properties["openslide.vendor"] == "hamamatsu"
        assert b.level_dimensions == a.level_dimensions
        for key in ("openslide.mpp-x", "openslide.mpp-y", "openslide.objective-power"):
            assert b.properties[key] == a.properties[key]
        assert "macro" in a.associated_images and "macro" not in b.associated_images
        w, h = a.level_dimensions[0]
        assert b.read_region((0, 0), 0, (w, h)).tobytes() == a.read_region((0, 0), 0, (w, h)).tobytes()


@pytest.fixture(scope="module", params=["small", "over-4gb"])
def ndpi_case(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(request.param)
    spec = NdpiSpec(hole=HOLE if request.param == "over-4gb" else 0)
    src = write_ndpi(work / f"{PLANTED['reference']}.ndpi", spec)
    before = sha256(src) if request.param == "small" else src.stat().st_mtime_ns
    out = work / "out"
    run("deid", src, "-o", out, check=0)
    return request.param, src, before, out


def test_ndpi_planted_identifiers_gone(ndpi_case):
    kind, src, before, out = ndpi_case
    assert set(found_needles([src], NEEDLES)[str(src)]) == set(NEEDLES)
    assert found_needles(all_files(out), NEEDLES) == {}


def test_ndpi_opens_the_same_and_stays_ndpi(ndpi_case):
    kind, src, before, out = ndpi_case
    [dst] = out.glob("*.ndpi")
    check_ndpi_output(src, dst)
    if kind == "over-4gb":
        assert dst.stat().st_size > 1 << 32
        first_ifd = struct.unpack("<Q", open(dst, "rb").read(12)[4:12])[0]
        assert first_ifd > 1 << 32  # the 8-byte NDPI header offset, high bits kept
        assert dst.stat().st_blocks * 512 < 64 << 20  # still sparse: holes were not written


def test_ndpi_levels_identical_and_mcu_starts_follow_the_removed_comment(ndpi_case):
    kind, src, before, out = ndpi_case
    [dst] = out.glob("*.ndpi")
    a, b = strips(src), strips(dst)
    comment = PLANTED["jpeg_comment"].encode()
    assert b[0] == without_comment(a[0], comment)
    assert b[1:] == a[1:]
    with tifffile.TiffFile(dst) as tf:
        stored = list(tf.pages[0].tags[65426].value)
    assert stored == mcu_starts(b[0])[:len(stored)] and len(stored) > 1
    for start in stored[1:]:
        assert b[0][start - 2] == 0xFF and 0xD0 <= b[0][start - 1] <= 0xD7


def test_ndpi_input_untouched(ndpi_case):
    kind, src, before, out = ndpi_case
    assert (sha256(src) if kind == "small" else src.stat().st_mtime_ns) == before


def test_real_ndpi(tmp_path):
    src, out, dst = deid_real_copy(tmp_path, "ndpi/test3-DAPI-2-387.ndpi")
    assert dst.suffix == ".ndpi"
    assert found_needles(all_files(out), REAL_NEEDLES) == {}
    assert strips(dst) == strips(src)  # every level byte-identical
    check_ndpi_output(src, dst)
    with openslide.OpenSlide(str(dst)) as s:
        assert len(s.level_dimensions) == 7
        assert s.properties["hamamatsu.Product"] == "C9600-12"
        assert not any(k.startswith("hamamatsu.") and "S/N" in k for k in s.properties)


def test_real_ndpi_keep_device_id_and_shifted_dates(tmp_path):
    out = tmp_path / "out"
    run("deid", shared_slide("ndpi/test3-DAPI-2-387.ndpi"), "-o", out, "--keep-device-id",
        "--dates", "shift", "--key-file", tmp_path / "k", check=0)
    [dst] = out.glob("*.ndpi")
    with openslide.OpenSlide(str(dst)) as s:
        assert s.properties["hamamatsu.NDP.S/N"] == "950291"
        created = s.properties["hamamatsu.Created"]
        assert created != "2011/05/23" and len(created) == 10


def _patch_properties(path: Path, where, data: bytes) -> None:
    """A synthetic NDPI with `data` written at where(tag 65449 of IFD 0)."""
    write_ndpi(path)
    with tifffile.TiffFile(path) as tf:
        at = where(tf.pages[0].tags[65449])
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(data)


def _corrupt_properties(path: Path) -> None:
    _patch_properties(path, lambda tag: tag.valueoffset + 10, b"\x00\x01\x02\xff\xfe")


def _properties_past_eof(path: Path) -> None:  # the entry's value offset
    _patch_properties(path, lambda tag: tag.offset + 8, struct.pack("<I", 0x7FFFFFF0))


@pytest.mark.parametrize("make,expect", [(_corrupt_properties, "property text is corrupt"),
                                         (_properties_past_eof, "past the end")])
def test_bad_ndpi(tmp_path, make, expect):
    src = tmp_path / "bad.ndpi"
    make(src)
    assert_rejected(src, expect)


def _classic_first_ifd(path: Path) -> None:
    """IFD 0 rewritten as a classic-TIFF tool writes it: a 4-byte next-IFD offset and no NDPI
    high-word block after it. OpenSlide and wsideid read it; tifffile logs a line for every
    entry it then misreads ("<TiffTag.fromfile> raised TiffFileError(...)", quoting the tag)."""
    data = bytearray(path.read_bytes())
    first = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, first)[0]
    following = struct.unpack_from("<Q", data, first + 2 + 12 * n)[0]
    at = len(data) + (-len(data)) % 4
    data += bytes(at - len(data)) + data[first:first + 2 + 12 * n] + struct.pack("<I", following)
    struct.pack_into("<I", data, 4, at)
    path.write_bytes(data)


def test_library_log_records_stay_off_stderr(tmp_path):
    src = tmp_path / "slide.ndpi"
    src.write_bytes(shared_slide("ndpi/test3-DAPI-2-387.ndpi").read_bytes())
    _classic_first_ifd(src)
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, check=0)
    assert [line for line in proc.stderr.splitlines() if not line.startswith("wsideid: ")] == []
    assert "TiffFileError" not in proc.stderr and "log message" not in proc.stderr
    [slide] = json.loads((out / "wsideid-report.json").read_text())["slides"]
    [logged] = [w for w in slide["warnings"] if "log message(s) from tifffile" in w]
    assert "TiffFileError" not in json.dumps(slide) and "TiffTag" not in logged
