"""Property-based tests of every fuzz target (fuzz/targets.py) with hypothesis: inputs are
the seeds mutated byte by byte (flips, extreme 16/32-bit fields, insertions, deletions,
splices, cuts), and for the text parsers any bytes at all. The long coverage-guided runs are
`fuzz/run.py` (docs/robustness.md); these are the quick ones that run with every change."""
from __future__ import annotations

import random
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

