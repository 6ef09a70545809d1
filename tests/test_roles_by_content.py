"""An image released as a pyramid level or a thumbnail must show the slide: a label photograph
that a file calls a thumbnail or a level (by its position, a keyword, a lens tag, a declared
size, a record name or an ImageType) is dropped, in every format, and a true thumbnail stays.

Each test plants a text-only label (a name and an MRN, no barcode: nothing else would catch
it) where the format keeps a thumbnail or a level, then checks that no image of the output has
the label's size, that the slide's warning says why, and that the planted words are in no
output byte.
"""
from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image, ImageDraw, ImageFont

from conftest import all_files, found_needles, run, sha256, shared_slide
from fixtures.images import pattern

NAME, MRN = "HARTIGAN, WILBUR", "MRN 48151623"
NOT_THE_SLIDE = "does not show the slide"
MISSHAPEN = "not shaped like"


def text_label(width: int, height: int) -> np.ndarray:
    """White paper with a name and an MRN printed on it."""
    picture = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, height // 8))
    for row, line in enumerate((NAME, MRN, "DOB 1961-02-03")):
        draw.text((12, 12 + row * (font.size + 8)), line, fill=(10, 10, 10), font=font)
    return np.asarray(picture)


def deid(src: Path, out: Path, *options: str) -> str:
    before = sha256(src) if src.is_file() else None
    proc = run("deid", src, "-o", out, *options, check=0)
    if before is not None:
        assert sha256(src) == before
    return proc.stderr


def no_plant_in(out: Path) -> None:
    assert found_needles(all_files(out), [NAME, "48151623"]) == {}


def write_svs(path: Path, thumbnail: np.ndarray) -> Path:
    """An Aperio SVS: a tiled JPEG level of 1024 x 768 and a stripped IFD 1 described as the
    thumbnail (`W x H -> w x h`), holding `thumbnail`."""
    level = pattern(768, 1024, 1)
    header = "Aperio Image Library v12.0.15 \r\n"
    with tifffile.TiffWriter(path) as tw:
        tw.write(level, tile=(256, 256), compression="jpeg", photometric="rgb",
                 description=header + "1024x768 [0,0 1024x768] (256x256) JPEG/RGB Q=80|AppMag = 20"
                 "|MPP = 0.5", metadata=None, software=False)
        h, w = thumbnail.shape[:2]
        tw.write(thumbnail, compression="lzw", rowsperstrip=h, photometric="rgb",
                 description=header + f"1024x768 -> {w}x{h} - |AppMag = 20|MPP = 0.5",
                 metadata=None, software=False)
    return path


def test_svs_label_stored_as_the_thumbnail_is_dropped(tmp_path):
    # the label has the slide's shape (4:3), so only its pixels give it away
    src = write_svs(tmp_path / "slide.svs", text_label(400, 300))
    stderr = deid(src, tmp_path / "out")
    assert NOT_THE_SLIDE in stderr and "IFD 1" in stderr
    [out] = (tmp_path / "out").glob("*.svs")
    with tifffile.TiffFile(out) as tf:
        assert [(p.imagewidth, p.imagelength) for p in tf.pages] == [(1024, 768)]
    no_plant_in(tmp_path / "out")


def test_svs_true_thumbnail_is_kept(tmp_path):
    level = pattern(768, 1024, 1)
    thumb = np.asarray(Image.fromarray(level).resize((400, 300), Image.Resampling.BOX))
    src = write_svs(tmp_path / "slide.svs", thumb)
    stderr = deid(src, tmp_path / "out")
    assert NOT_THE_SLIDE not in stderr
    [out] = (tmp_path / "out").glob("*.svs")
    with tifffile.TiffFile(out) as tf:
        assert [(p.imagewidth, p.imagelength) for p in tf.pages] == [(1024, 768), (400, 300)]


def test_real_svs_thumbnail_still_released():
    """CMU-1's own thumbnail resembles its level (the check must not drop true thumbnails)."""
    from wsideid import adapters, batch
    from wsideid.images.likeness import resembles

    [job] = batch.find([shared_slide("svs/CMU-1-Small-Region.svs")], repair=False).jobs
    adapter = adapters.by_name(job.format)
    slide = adapter.read(job)
    [thumb] = [im for im in adapter.images(slide) if im.role == "thumbnail"]
    [label] = [im for im in adapter.images(slide) if im.role == "label"]
    level = adapter.smallest_level(slide)
    assert resembles(adapter.pixels(slide, thumb), level)
    assert not resembles(adapter.pixels(slide, label), level)


def _inline_value_offset(path: Path, page: int, code: int) -> int:
    with tifffile.TiffFile(path) as tf:
        return tf.pages[page].tags[code].valueoffset


def test_ndpi_macro_with_a_lens_is_not_a_level(tmp_path):
    """NDPI tells a level from the macro by SourceLens (65421) alone; a macro photograph (it
    shows the printed label) given a lens of 40 must not become a level."""
    src = tmp_path / "slide.ndpi"
    shutil.copy(shared_slide("ndpi/test3-DAPI-2-387.ndpi"), src)
    with tifffile.TiffFile(src) as tf:
        [macro] = [i for i, p in enumerate(tf.pages) if p.tags[65421].value == -1]
        macro_size = (tf.pages[macro].imagewidth, tf.pages[macro].imagelength)
    at = _inline_value_offset(src, macro, 65421)
    with open(src, "r+b") as fh:
        fh.seek(at)
        fh.write(struct.pack("<f", 40.0))
    stderr = deid(src, tmp_path / "out")
    assert MISSHAPEN in stderr and f"IFD {macro}" in stderr
    [out] = (tmp_path / "out").glob("*.ndpi")
    with tifffile.TiffFile(out) as tf:
        sizes = [(p.imagewidth, p.imagelength) for p in tf.pages]
    assert macro_size not in sizes and len(sizes) >= 4


def test_ome_label_declared_with_the_slide_size_is_dropped(tmp_path):
    """An OME Image named neutrally whose Pixels declare the slide's size, stored in an IFD of
    a label's size: the IFD's own shape decides."""
    from fixtures.ometiff import ome_xml, write_ome_tiff

    xml = ome_xml(1024, 768, False, label=(300, 200), macro=(800, 300))
    xml = xml.replace('Name="label"', 'Name="Image 1"').replace(
        'SizeX="300" SizeY="200"', 'SizeX="1024" SizeY="768"')
    src = write_ome_tiff(tmp_path / "slide.ome.tif", plant=False, xml=xml,
                         label_pixels=text_label(300, 200))
    stderr = deid(src, tmp_path / "out")
    assert MISSHAPEN in stderr
    [out] = (tmp_path / "out").glob("*.ome.tif")
    with tifffile.TiffFile(out) as tf:
        assert (300, 200) not in [(p.imagewidth, p.imagelength) for p in tf.pages]
        assert 'Name="Image 1"' not in (tf.pages[0].description or "")
    no_plant_in(tmp_path / "out")


def test_mirax_label_stored_as_the_preview_is_dropped(tmp_path):
    from fixtures.mrxs import MrxsSpec, write_mrxs

    src = write_mrxs(tmp_path / "in" / "slide.mrxs",
                     MrxsSpec(plant=False, preview_pixels=text_label(320, 240)))
    stderr = deid(src, tmp_path / "out")
    assert NOT_THE_SLIDE in stderr and "SlidePreview" in stderr
    import openslide

    [out] = (tmp_path / "out").glob("*.mrxs")
    with openslide.OpenSlide(str(out)) as osr:
        assert "thumbnail" not in osr.associated_images
    no_plant_in(tmp_path / "out")


def test_mirax_true_preview_is_kept(tmp_path):
    from fixtures.mrxs import MrxsSpec, write_mrxs

    src = write_mrxs(tmp_path / "in" / "slide.mrxs", MrxsSpec(plant=False))
    stderr = deid(src, tmp_path / "out")
    assert NOT_THE_SLIDE not in stderr
    import openslide

    [out] = (tmp_path / "out").glob("*.mrxs")
    with openslide.OpenSlide(str(out)) as osr:
        assert "thumbnail" in osr.associated_images


def test_dicom_label_typed_as_thumbnail_is_dropped(tmp_path):
    """A label photograph put into the series with ImageType ...\\THUMBNAIL: its shape (not
    the volume's) decides."""
    from pydicom.encaps import encapsulate

    series = tmp_path / "in"
    series.mkdir()
    volume = pydicom.dcmread(shared_slide("dicom/highdicom-sm/sm_image.dcm"))
    volume.save_as(series / "0.dcm")
    label = pydicom.dcmread(shared_slide("dicom/gcp-label-datamatrix/test_dicom_matrix.dcm"))
    size = (int(label.Columns), int(label.Rows))
    buf = io.BytesIO()
    Image.fromarray(text_label(*size)).save(buf, "JPEG", quality=95)
    label.PixelData = encapsulate([buf.getvalue()])
    label.ImageType = ["ORIGINAL", "PRIMARY", "THUMBNAIL", "NONE"]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        setattr(label, keyword, volume.get(keyword))
    label.SOPInstanceUID = pydicom.uid.generate_uid()
    label.file_meta.MediaStorageSOPInstanceUID = label.SOPInstanceUID
    label.save_as(series / "1.dcm")
    stderr = deid(series, tmp_path / "out")
    assert MISSHAPEN in stderr
    written = [p for p in (tmp_path / "out").rglob("*.dcm")]
    assert written and all(
        pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == "VOLUME" for p in written)
    no_plant_in(tmp_path / "out")


@pytest.mark.parametrize("reference", ["label", "flat"])
def test_likeness_refuses_what_is_not_the_slide(reference):
    from wsideid.images.likeness import resembles

    slide = pattern(300, 400, 5)
    reduced = np.asarray(Image.fromarray(slide).resize((100, 75), Image.Resampling.BOX))
    assert resembles(reduced, slide)
    other = text_label(400, 300) if reference == "label" else np.full((75, 100, 3), 240, np.uint8)
    assert not resembles(other, slide)


def _converted_roles(src: Path, out: Path) -> list[tuple[str, int, int]]:
    proc = run("convert", src, "--to", "dicom", "-o", out, check=0)
    assert proc.returncode == 0, proc.stderr
    roles = []
    for path in sorted(out.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        roles.append((ds.ImageType[2], int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)))
    return roles


def test_convert_leaves_out_a_label_stored_as_the_thumbnail(tmp_path):
    """wsidicomizer writes the thumbnail its reader shows: a conversion must leave it out
    when the slide's thumbnail was dropped for not showing the slide (it was released as a
    THUMBNAIL instance while the warning said dropped), and keep a true one."""
    from fixtures.svs import SvsSpec
    from fixtures.svs import write_svs as write_aperio

    label = write_aperio(tmp_path / "slide.svs", SvsSpec(label=False, macro=False,
                                                          thumbnail_pixels=text_label(384, 256)))
    roles = _converted_roles(label, tmp_path / "out")
    assert [r for r in roles if r[0] != "VOLUME"] == []
    true = write_aperio(tmp_path / "true.svs", SvsSpec(label=False, macro=False))
    assert ("THUMBNAIL", 384, 256) in _converted_roles(true, tmp_path / "out2")
    # the verification decodes every picture the series holds, and refuses one the plan left
    # out (should wsidicomizer write it anyway)
    from wsideid.convert import Associated

    files = sorted((tmp_path / "out2").rglob("*.dcm"))
    assert Associated(thumbnail="keep").verify(files, "wsi-x") == []
    assert Associated(thumbnail="drop").verify(files, "wsi-x") == [
        "the thumbnail image was to be left out but the series holds it"]
