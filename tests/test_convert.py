"""wsideid convert --to dicom: SVS, NDPI and OME-TIFF to de-identified DICOM WSI."""
from __future__ import annotations

import shutil

import openslide
import pydicom
import pytest
import tifffile
from pydicom.encaps import generate_frames

from conftest import all_files, assert_rejected, found_needles, run, shared_slide
from test_dicom import wsidicom_levels
from test_real_svs import CMU_NEEDLES
from wsideid.verify.dicom import dciodvfy_errors


def scan_data(stream: bytes) -> bytes:
    return stream[stream.find(b"\xff\xda"):].rstrip(b"\x00")


def converted(out):
    folders = sorted(out.glob("wsi-*"))
    assert len(folders) == 1
    return sorted(folders[0].glob("*.dcm"))


def test_convert_svs_copies_tiles_and_removes_identity(tmp_path):
    src = tmp_path / "CMU-1-Small-Region.svs"
    shutil.copy(shared_slide("svs/CMU-1-Small-Region.svs"), src)
    out = tmp_path / "out"
    run("convert", src, "--to", "dicom", "-o", out, check=0)
    files = converted(out)
    assert found_needles(all_files(out), CMU_NEEDLES) == {}
    volume = [pydicom.dcmread(f) for f in files if pydicom.dcmread(f, stop_before_pixels=True).ImageType[2] == "VOLUME"]
    assert len(volume) == 1
    ds = volume[0]
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientID == files[0].parent.name
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    frames = {scan_data(f) for f in generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))}
    with tifffile.TiffFile(src) as tf:
        page, fh = tf.pages[0], tf.filehandle
        tiles = []
        for off, n in zip(page.dataoffsets, page.databytecounts):
            fh.seek(off)
            tiles.append(scan_data(fh.read(n)))
    assert all(t in frames for t in tiles)  # every tile's compressed data, unchanged
    for f in files:
        assert not dciodvfy_errors(f)
        assert "label" not in str(pydicom.dcmread(f, stop_before_pixels=True).ImageType).lower()
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(files[0])) as b:
        assert b.properties["openslide.vendor"] == "dicom"
        assert b.level_dimensions == a.level_dimensions
        assert wsidicom_levels(files[0].parent) == list(a.level_dimensions)
        assert float(b.properties["openslide.mpp-x"]) == pytest.approx(float(a.properties["openslide.mpp-x"]))


def test_convert_ndpi_and_ome(tmp_path):
    out = tmp_path / "out"
    ndpi = shared_slide("ndpi/test3-DAPI-2-387.ndpi")
    run("convert", ndpi, "--to", "dicom", "-o", out, check=0)
    files = converted(out)
    assert found_needles(all_files(out), ["950291", "950410", "2011/05/23", "test3-DAPI"]) == {}
    with tifffile.TiffFile(ndpi) as tf:
        stored = [(p.shape[1], p.shape[0]) for p in tf.pages if float(p.tags[65421].value) > 0]
    with openslide.OpenSlide(str(files[0])) as b:
        assert list(b.level_dimensions) == stored  # the levels the NDPI stores
    for f in files:
        assert not dciodvfy_errors(f)
    out2 = tmp_path / "out2"
    run("convert", shared_slide("ometiff/OS-2-ndpi.ome.tif"), "--to", "dicom", "-o", out2, check=0)
    [f] = converted(out2)
    with openslide.OpenSlide(str(f)) as b:
        assert b.level_dimensions[0] == (2202, 2202)
    assert found_needles(all_files(out2), ["OS-2-ndpi", "77794f72-4f3e-4627-b2e4-93dd22c15977"]) == {}


def test_convert_generated_ndpi_and_ome_subifd_pyramid_keep_every_stored_level(tmp_path):
    """Every stored level becomes a DICOM level: NDPI stripes (compared by pixels, frames are
    cut and padded by the converter) and an OME SubIFD pyramid (which OpenSlide does not show,
    so it cannot be what the output is compared with)."""
    from fixtures.ndpi import write_ndpi
    from fixtures.ometiff import write_ome_tiff

    ndpi = write_ndpi(tmp_path / "g.ndpi")
    ome = tmp_path / "g.ome.tif"
    write_ome_tiff(ome)
    for src, levels in ((ndpi, [(1024, 768), (512, 384)]),
                        (ome, [(1024, 768), (512, 384), (256, 192)])):
        out = tmp_path / f"out-{src.name}"
        run("convert", src, "--to", "dicom", "-o", out, check=0)
        files = converted(out)
        with openslide.OpenSlide(str(files[0])) as b:
            assert list(b.level_dimensions) == levels
        assert wsidicom_levels(files[0].parent) == levels


def test_convert_without_pixel_spacing_says_so(tmp_path):
    """An SVS without MPP, which the converter needs: one clear line, nothing left."""
    import re

    from fixtures.svs import SvsSpec, write_svs
    from tiffpatch import set_text

    src = write_svs(tmp_path / "no-mpp.svs", SvsSpec(label=False, macro=False))
    with tifffile.TiffFile(src) as tf:
        descriptions = [page.description for page in tf.pages]
    for index, text in enumerate(descriptions):
        if "MPP" in text:
            set_text(src, index, 270, re.sub(r"\|MPP = [0-9.]+", "", text))
    out = tmp_path / "out"
    proc = run("convert", src, "--to", "dicom", "-o", out, check=2)
    assert proc.stderr.count("wsideid: error:") == 1 and "no MPP, the pixel spacing" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["wsideid-report.json"]


def test_convert_is_stable_with_a_key(tmp_path):
    key = tmp_path / "key"
    uids = []
    for n in range(2):
        out = tmp_path / f"out{n}"
        run("convert", shared_slide("svs/CMU-1-Small-Region.svs"), "--to", "dicom", "-o", out,
            "--key-file", key, check=0)
        uids.append(sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                           for f in converted(out)))
    assert uids[0] == uids[1]


def test_convert_bad_input(tmp_path):
    src = tmp_path / "notes.svs"
    src.write_text("not a slide")
    assert_rejected(src, "not a TIFF", "convert", "--to", "dicom")


def test_convert_refuses_when_the_lossless_path_is_missing(tmp_path, monkeypatch):
    """Without libturbojpeg the tiles would be re-encoded: refused unless --allow-transcode."""
    from wsideid import convert as conversion
    from wsideid.errors import SlideError
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy

    job = Job((shared_slide("svs/CMU-1-Small-Region.svs"),), "aperio-svs")

    monkeypatch.setattr(conversion, "lossless_available", lambda: "libturbojpeg is not usable")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SlideError, match="--allow-transcode"):
        conversion.convert(job, Policy(), Keyring(b"k" * 32), out)
    assert list(out.iterdir()) == []
    result = conversion.convert(job, Policy(), Keyring(b"k" * 32), out, allow_transcode=True)
    assert result.output is not None and result.output.exists()


def test_convert_refuses_date_modes_it_cannot_honour(tmp_path):
    """wsidicomizer writes a placeholder acquisition date (1970-01-01): shifting it, or keeping
    its year, released a made-up date marked as modified from the slide's."""
    src = shared_slide("svs/CMU-1-Small-Region.svs")
    for mode in ("shift", "keep-year"):
        out = tmp_path / mode
        proc = run("convert", src, "--to", "dicom", "-o", out, "--dates", mode, check=None)
        assert proc.returncode == 2 and not out.exists()
        assert len(proc.stderr.strip().splitlines()) == 1 and "scan date" in proc.stderr


def test_convert_leaves_out_an_overview_that_does_not_decode_as_declared(tmp_path):
    """wsidicomizer writes an OME-TIFF macro of several strips as its first strip alone under
    a header declaring the whole image: redacting it was an internal error, keeping it
    released a broken picture. Such an image is left out, said in a warning; if it is written
    whole (a later wsidicomizer), it is redacted and decodes no code."""
    import numpy as np
    import zxingcpp
    from fixtures import labels, ometiff

    src = tmp_path / "codes.ome.tif"
    ometiff.write_ome_tiff(src, label_pixels=labels.label_picture(600, 320, "QRCode"),
                           macro_pixels=labels.overview_picture(900, 300, ends=("left", "right")))
    out = tmp_path / "out"
    proc = run("convert", src, "--to", "dicom", "-o", out, "--macro", "redact", check=None)
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr
    for path in sorted(out.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.ImageType[2] == "OVERVIEW":
            frame = np.asarray(ds.pixel_array)
            frame = frame[0] if frame.ndim == 4 else frame
            assert frame.shape[:2] == (ds.Rows, ds.Columns)
            assert zxingcpp.read_barcodes(frame) == []
    left_out = "does not decode to the size its header declares" in proc.stderr
    has_overview = any(pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == "OVERVIEW"
                       for p in out.rglob("*.dcm"))
    assert left_out != has_overview


def test_convert_keeps_a_label_that_passes_its_checks(tmp_path):
    """The LABEL instance's LabelText and BarcodeValue are written present and empty (Type 2);
    the re-plan of the written series took the empty elements for values still to remove, so
    `--label keep` always failed verification."""
    from fixtures.svs import SvsSpec, write_svs

    src = write_svs(tmp_path / "plain.svs", SvsSpec(macro=False))
    out = tmp_path / "out"
    proc = run("convert", src, "--to", "dicom", "-o", out, "--label", "keep", "--no-ocr", check=None)
    assert proc.returncode == 0, proc.stderr
    labels = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.rglob("*.dcm")]
    labels = [ds for ds in labels if ds.ImageType[2] == "LABEL"]
    assert len(labels) == 1 and labels[0].LabelText == "" and labels[0].BarcodeValue == ""


def test_convert_refuses_jpeg_2000_levels_up_front(tmp_path):
    """wsidicomizer writes Aperio JPEG 2000 tiles under a JPEG transfer syntax: the frames'
    check refused them as 'outside the codec's grammar', blaming the slide. Refused up front,
    saying why and what to use instead."""
    from fixtures.svs import SvsSpec, write_svs

    src = write_svs(tmp_path / "j2k.svs", SvsSpec(codec="j2k"))
    proc = run("convert", src, "--to", "dicom", "-o", tmp_path / "out", check=None)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "JPEG 2000" in proc.stderr and "wsideid deid" in proc.stderr
