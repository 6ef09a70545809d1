"""Property-based tests of every fuzz target (fuzz/targets.py) with hypothesis: inputs are
the seeds mutated byte by byte (flips, extreme 16/32-bit fields, insertions, deletions,
splices, cuts), and for the text parsers any bytes at all. The long coverage-guided runs are
`fuzz/run.py` (docs/robustness.md); these are the quick ones that run with every change."""
from __future__ import annotations

import random
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

import run as driver  # noqa: E402
import targets as T  # noqa: E402

from wsideid.errors import SlideError  # noqa: E402

EXAMPLES = {"tiff_reader": 40, "slide_plan": 12, "aperio_description": 300, "ndpi_properties": 300, "ome_xml": 200,
            "slidedat": 300, "index_dat": 300, "dicom_header": 40, "jpeg_segments": 300,
            "geojson": 300, "deid": 4}
TEXT = {"aperio_description", "ndpi_properties", "ome_xml", "slidedat", "index_dat", "jpeg_segments", "geojson"}


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # pydicom's warnings about fuzzed values
        yield


@pytest.mark.parametrize("name", list(T.TARGETS))
def test_seeds_hold(name):
    for data in T.seeds(name):
        T.TARGETS[name](data)


@pytest.mark.parametrize("name", list(T.TARGETS))
def test_mutated_seeds(name):
    target, corpus = T.TARGETS[name], T.seeds(name)

    @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 2 ** 32 - 1))
    def mutated(n):
        rng = random.Random(n)
        target(driver.mutate(rng.choice(corpus), rng, corpus))

    mutated()


@pytest.mark.parametrize("name", sorted(TEXT))
def test_any_bytes(name):
    target = T.TARGETS[name]

    @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=2048))
    def anything(data):
        target(data)

    anything()


# ---- what the fuzzing found (kept as plain regressions) -------------------------------------

def _dicom_with(tmp_path: Path, old: bytes, new: bytes) -> Path:
    if not T.DICOM_SEED.exists():
        pytest.skip("no shared DICOM slides")
    data = T.DICOM_SEED.read_bytes()
    assert old in data and len(old) == len(new)
    path = tmp_path / "x.dcm"
    path.write_bytes(data.replace(old, new, 1))
    return path


def test_dicom_unknown_vr_is_an_input_error(tmp_path):
    """A fuzzed VR used to escape as NotImplementedError when the element was first used."""
    from wsideid.containers.dicom.io import read_header

    path = _dicom_with(tmp_path, b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00FS")   # Modality
    with pytest.raises(SlideError, match="Unknown Value Representation 'FS'"):
        read_header(path)


def test_dicom_unknown_transfer_syntax_is_an_input_error(tmp_path):
    """A TransferSyntaxUID that is no transfer syntax used to escape as ValueError."""
    from wsideid.containers.dicom.io import read_header

    import pydicom

    if not T.DICOM_SEED.exists():
        pytest.skip("no shared DICOM slides")
    syntax = str(pydicom.dcmread(T.DICOM_SEED, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    path = _dicom_with(tmp_path, syntax.encode(),
                       syntax.replace("1.2.840.10008.1.2", "1.2.840.10008.9.9", 1).encode())
    with pytest.raises(SlideError, match="not a known transfer syntax"):
        read_header(path)


def test_huge_removed_value_is_searched_in_bounded_memory():
    """A 50 MB removed value (planted in an NDPI property) used to need 12 encoded copies:
    it is searched for by three slices, which any survival of it contains."""
    from wsideid import needles

    value = "lorem ipsum " * 4_000_000 + "NDPI-HUGE"
    targets = needles.usable([value])
    assert len(targets) == 3 and all(len(t) <= needles.SLICE for t in targets)
    assert needles.find_in(b"xx" + value[-600:].encode() + b"yy", [value]) == [value]
    assert needles.find_in(b"nothing of it", [value]) == []


def test_a_macro_that_decodes_to_nothing_is_dropped_not_a_crash(tmp_path):
    """Found by the slide_plan target: one byte of the NDPI fixture's macro IFD changed makes
    tifffile decode the macro to an empty array, which the barcode search could not take
    (ValueError). An image to be kept that decodes to no picture cannot be checked: dropped."""
    from conftest import run as cli
    from fixtures.ndpi import write_ndpi

    (tmp_path / "in").mkdir()
    path = write_ndpi(tmp_path / "in" / "slide.ndpi")
    data = bytearray(path.read_bytes())
    assert data[392003] == 250, "the fixture changed: find the byte again (fuzz/run.py)"
    data[392003] = 251
    path.write_bytes(bytes(data))
    proc = cli("deid", path, "-o", tmp_path / "out", "--macro", "keep", check=0)
    assert proc.stderr.strip().splitlines() == [
        f"wsideid: warning: {path}: the macro image (IFD 2) could not be decoded to be "
        "checked: dropped"]



REGRESSIONS = ROOT / "tests" / "fuzz_regressions"


def test_a_file_meta_sequence_found_by_fuzzing_is_refused_at_once():
    """Found by the dicom_header target (atheris, 2026-11-30): (0002,0000) made a sequence
    that swallows the data set. pydicom formats it into a log message whose text grows
    exponentially with the nesting (each level quotes a traceback): more than 24 GB of memory
    and minutes before the fix. Run under the hostile corpus's bounds (1 GiB, 30 s)."""
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
              "from pathlib import Path; from wsideid.containers.dicom.io import read_header;"
              "from wsideid.errors import SlideError\n"
              "try:\n    read_header(Path(sys.argv[1]))\nexcept SlideError as exc:\n    print(exc)")
    done = subprocess.run([sys.executable, "-c", script,
                           str(REGRESSIONS / "dicom-file-meta-sequence.dcm")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-500:]
    assert "File Meta Information holds a sequence" in done.stdout


def test_file_meta_check_reads_the_group_as_pydicom_would(tmp_path):
    """The group is walked by pydicom's own reader, so that an element pydicom reads in a way
    of its own (an unknown VR such as B1 read as explicit with a 2-byte length) cannot put the
    check out of step with dcmread (a stranger's attack bypassed a hand-written walk so)."""
    import io

    from wsideid.containers.dicom.io import check_file_meta, read_header

    head = b"\0" * 128 + b"DICM"
    ul = struct.pack("<HH", 2, 0) + b"UL" + struct.pack("<HI", 4, 30)
    ui = struct.pack("<HH", 2, 0x10) + b"UI" + struct.pack("<H", 20) + b"1.2.840.10008.1.2.1\0"
    after = struct.pack("<HH", 8, 0x16) + b"UI" + struct.pack("<H", 2) + b"1\0"
    for fine in (head + ul + ui + after, head + ul + ui, b"\0" * 140):
        check_file_meta(io.BytesIO(fine))
    sq = struct.pack("<HH", 2, 0) + b"SQ\0\0" + struct.pack("<I", 8) + b"\xfe\xff\x00\xe0\0\0\0\0"
    implicit = struct.pack("<HH", 2, 0) + struct.pack("<I", 4) + b"\0" * 4 + \
        struct.pack("<HHI", 2, 0x10, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0) + \
        struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    long_ob = struct.pack("<HH", 2, 1) + b"OB\0\0" + struct.pack("<I", 2 << 20) + b"\0" * (2 << 20)
    for bad in (head + sq + after, head + implicit, head + ul + long_ob + after):
        with pytest.raises(SlideError):
            check_file_meta(io.BytesIO(bad))
    # the attack: an OB element, then one of VR "B1", then the fuzzer's sequence
    found = (REGRESSIONS / "dicom-file-meta-sequence.dcm").read_bytes()
    ob = struct.pack("<HH", 2, 1) + b"OB\0\0" + struct.pack("<I", 2) + b"\0\1"
    b1 = struct.pack("<HH", 2, 0x101) + b"B1" + struct.pack("<H", 0)
    path = tmp_path / "bypass.dcm"
    path.write_bytes(found[:132] + ob + b1 + found[132:])
    with pytest.raises(SlideError, match="File Meta Information holds a sequence"):
        read_header(path)
