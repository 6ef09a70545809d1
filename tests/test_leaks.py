"""Leak-proofing, class by class, with identifiers planted in real slides and generated ones:
image roles decided by content and structure, every kept value validated, structured text kept
element by element, text segments wherever they sit, DICOM UIDs and locations, no silent data
loss, in-place runs that never leave a half-done slide. Every output byte, path and the audit
report are searched for every planted value."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pydicom
import pytest
import tifffile

from conftest import ROOT, all_files, found_needles, run, sha256, shared_slide
from tiffpatch import drop_ifd_from_chain, read_run, replace_run, set_tag, set_text


def copy_of(tmp_path: Path, rel: str, name: str | None = None) -> Path:
    src = shared_slide(rel)
    dst = tmp_path / "in" / (name or src.name)
    dst.parent.mkdir(exist_ok=True)
    shutil.copy(src, dst)
    return dst


def deid(src: Path, tmp_path: Path, *options, check: int = 0):
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, *options, check=check)
    return out, proc


def released(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name not in ("wsideid-report.json", ".wsideid")]


def report_text(out: Path) -> str:
    return (out / "wsideid-report.json").read_text()


def no_leak(out: Path, needles: list[str]) -> None:
    assert found_needles(all_files(out), needles) == {}


# ---- image roles: content and structure, not position ------------------------------------

def test_svs_without_thumbnail_keeps_no_label_as_thumbnail(tmp_path):
    """CMU-1 with its thumbnail IFD unlinked: the label becomes IFD 1, where a thumbnail used
    to be. It is still a label (its description says so) and is dropped."""
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    drop_ifd_from_chain(src, 1)
    label = read_run(src, 1, 0)
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        assert (463, 387) not in [p.shape[:2] for p in tf.pages]
    assert label[:64] not in dst.read_bytes()
    with openslide.OpenSlide(str(dst)) as slide:
        assert "thumbnail" not in slide.associated_images and "label" not in slide.associated_images


def test_svs_image_whose_signals_disagree_takes_the_more_dangerous_role(tmp_path):
    """The thumbnail's description says 'label' (a label stored where the thumbnail goes):
    with --label keep it is kept as a label, by default it is dropped; never a thumbnail."""
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    set_text(src, 1, 270, "Aperio Image Library v11.2.1 \nlabel 574x768")
    proc = run("inspect", src, "--json", check=0)
    roles = [img["role"] for img in json.loads(proc.stdout)["images"]]
    assert roles == ["level", "label", "label", "macro"]
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    with openslide.OpenSlide(str(dst)) as slide:
        assert slide.associated_images == {} or set(slide.associated_images) == set()


@pytest.mark.parametrize("name", ["label image", "Macro Image", "slide label", "OVERVIEW IMAGE",
                                  "Barcode"])
def test_ome_images_named_like_converted_labels_are_not_levels(tmp_path, name):
    from fixtures.ometiff import ome_xml, write_ome_tiff

    xml = ome_xml(1024, 768).replace('Name="label"', f'Name="{name}"').replace(
        'Name="macro"', f'Name="{name} 2"')
    src = write_ome_tiff(tmp_path / "x.ome.tif", xml=xml)
    images = json.loads(run("inspect", src, "--json", check=0).stdout)["images"]
    assert [i["role"] for i in images[1:]] != ["level", "level"]
    assert all(i["action"] == "drop" for i in images[1:])
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        assert [p.shape[:2] for p in tf.pages] == [(768, 1024, 3)[:2]]


def test_ome_image_of_unknown_role_is_dropped_with_a_warning(tmp_path):
    """A second Image with a neutral name and a shape unlike the slide's (a label photograph
    stored as 'Series 2') is not kept as a pyramid level."""
    from fixtures.ometiff import ome_xml, write_ome_tiff

    xml = ome_xml(1024, 768).replace('Name="label"', 'Name="Series 2"')
    src = write_ome_tiff(tmp_path / "x.ome.tif", xml=xml)
    out, proc = deid(src, tmp_path)
    assert "role cannot be told" in proc.stderr
    with tifffile.TiffFile(released(out)[0]) as tf:
        assert (200, 300) not in [p.shape[:2] for p in tf.pages]


def test_generic_tiff_drops_a_stripped_label_in_ifd_0(tmp_path):
    """Ventana BIF files put a stripped label image first; nothing is kept for its position."""
    from fixtures.images import pattern

    src = tmp_path / "bif-like.tif"
    with tifffile.TiffWriter(src) as tw:
        tw.write(np.full((40, 60, 3), 230, np.uint8), photometric="rgb", software=False,
                 description="Label Image")
        tw.write(pattern(512, 768, 3), tile=(128, 128), compression="jpeg", photometric="rgb",
                 software=False, description="level=0 mag=20")
        tw.write(np.full((50, 70, 3), 120, np.uint8), photometric="rgb", software=False)
    out, _ = deid(src, tmp_path)
    with tifffile.TiffFile(released(out)[0]) as tf:
        assert [p.shape[:2] for p in tf.pages] == [(512, 768)]


def test_multi_channel_fluorescence_tiff_is_refused_not_cut_to_one_channel(tmp_path):
    """A QPTIFF-like file: one full-resolution IFD per channel, XML in each description."""
    src = tmp_path / "qptiff.tif"
    rng = np.random.default_rng(0)
    with tifffile.TiffWriter(src) as tw:
        for channel in ("DAPI", "FITC", "Cy5"):
            tw.write(rng.integers(0, 255, (512, 512), np.uint8), tile=(256, 256), software=False,
                     description=f"<PerkinElmer-QPI-ImageDescription><Name>{channel}</Name>"
                                 "</PerkinElmer-QPI-ImageDescription>")
    out, proc = deid(src, tmp_path, check=2)
    assert "channels" in proc.stderr and proc.stderr.count("wsideid: error:") == 1
    assert released(out) == [] if out.exists() else True


@pytest.mark.parametrize("tiled", [True, False])
def test_stripped_or_tiled_planes_of_one_size_are_refused(tmp_path, tiled):
    """Three pages of one size (channels or z-planes), stripped as much as tiled: refused, not
    cut to the first page."""
    src = tmp_path / "planes.tif"
    rng = np.random.default_rng(1)
    with tifffile.TiffWriter(src) as tw:
        for _ in range(3):
            tw.write(rng.integers(0, 255, (512, 512), np.uint8), software=False,
                     **({"tile": (256, 256)} if tiled else {"rowsperstrip": 64}))
    out, proc = deid(src, tmp_path, check=2)
    assert "no channel is lost" in proc.stderr


MARKER = b"ZEBULONQUACKENBUSH"
APERIO_BASE = ("Aperio Image Library v11.2.1 \r\n2048x1536 [0,0 2048x1536] (256x256) JPEG/RGB "
               "Q=70|AppMag = 20|MPP = 0.4990")


def _marker_image(h: int, w: int) -> np.ndarray:
    return np.frombuffer(MARKER * (h * w * 3 // len(MARKER) + 1), np.uint8)[:h * w * 3] \
        .reshape(h, w, 3)


@pytest.mark.parametrize("kind", ["svs", "tif"])
def test_an_image_in_a_subifd_not_shaped_like_its_parent_is_dropped(tmp_path, kind):
    """A label stored as a SubIFD of level 0: not a reduced copy of its parent, so no level."""
    from fixtures.images import pattern

    src = tmp_path / f"sub.{kind}"
    img = pattern(1536, 2048, 3)
    common = dict(photometric="rgb", software=False, metadata=None)
    with tifffile.TiffWriter(src) as tw:
        tw.write(img, tile=(256, 256), compression="jpeg", subifds=1,
                 description=APERIO_BASE if kind == "svs" else None, **common)
        tw.write(_marker_image(120, 300), description="Aperio Image Library v11.2.1 \nlabel "
                 "300x120" if kind == "svs" else None, **common)
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    assert MARKER not in dst.read_bytes()
    with tifffile.TiffFile(dst) as tf:
        assert tf.pages[0].shape[:2] == (1536, 2048) and not tf.pages[0].subifds


def test_a_subifd_pyramid_level_is_kept(tmp_path):
    """The other side: a SubIFD that is a reduced copy of its parent stays, pixels unchanged."""
    from fixtures.images import pattern

    src = tmp_path / "pyramid.tif"
    img = pattern(1024, 1536, 3)
    with tifffile.TiffWriter(src) as tw:
        tw.write(img, tile=(256, 256), compression="zlib", subifds=1, photometric="rgb",
                 software=False)
        tw.write(np.ascontiguousarray(img[::2, ::2]), tile=(256, 256), compression="zlib",
                 photometric="rgb", subfiletype=1, software=False)
    out, _ = deid(src, tmp_path)
    with tifffile.TiffFile(released(out)[0]) as tf:
        [sub] = tf.pages[0].pages
        assert np.array_equal(sub.asarray(), img[::2, ::2])


def test_svs_tiled_image_not_shaped_like_level_0_is_no_level(tmp_path):
    """A tiled portrait image in an SVS, its description a plain geometry line: tiled, but
    nothing like a reduced copy of level 0, so dropped; the real levels stay."""
    from fixtures.images import pattern

    src = tmp_path / "in.svs"
    img = pattern(1536, 2048, 3)
    common = dict(photometric="rgb", software=False, metadata=None)
    with tifffile.TiffWriter(src) as tw:
        tw.write(img, tile=(256, 256), compression="jpeg", description=APERIO_BASE, **common)
        tw.write(np.ascontiguousarray(img[::4, ::4]), tile=(256, 256), compression="jpeg",
                 description="Aperio Image Library v11.2.1 \r\n2048x1536 [0,0 2048x1536] "
                             "(256x256) -> 512x384 JPEG/RGB Q=70", **common)
        tw.write(_marker_image(512, 256), tile=(256, 256), compression=None,
                 description="Aperio Image Library v11.2.1 \r\n256x512 (256x256) RAW", **common)
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    assert MARKER not in dst.read_bytes()
    with openslide.OpenSlide(str(dst)) as slide:
        assert slide.level_dimensions == ((2048, 1536), (512, 384))


def test_generic_tiff_keeps_a_stripped_full_resolution_base(tmp_path):
    """A stripped first image larger than the tiled ones after it is the slide's base, not a
    stray image: dropping it would lose the best pixels."""
    from fixtures.images import pattern

    src = tmp_path / "base.tif"
    img = pattern(600, 800, 3)
    with tifffile.TiffWriter(src) as tw:
        tw.write(img, compression="lzw", rowsperstrip=64, photometric="rgb", software=False)
        tw.write(np.ascontiguousarray(img[::2, ::2]), tile=(128, 128), compression="zlib",
                 photometric="rgb", subfiletype=1, software=False)
    out, _ = deid(src, tmp_path)
    with tifffile.TiffFile(released(out)[0]) as tf:
        assert np.array_equal(tf.pages[0].asarray(), img)
        assert [p.shape[:2] for p in tf.pages] == [(600, 800), (300, 400)]


# ---- every kept value is what its catalog says it is ---------------------------------------

def test_numeric_tags_carrying_text_are_removed(tmp_path):
    """ResolutionUnit stored as ASCII, and a SHORT array (MinSampleValue) whose values spell a
    name: both removed and reported, the text nowhere in the output; the slide still opens."""
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    set_text(src, 0, 254, "DR JANE QUACKENBUSH")                 # NewSubfileType as text
    spelled = "MRN 0815 4711".encode()
    set_tag(src, 1, 254, 3, b"".join(struct.pack("<H", c) for c in spelled))   # 13 SHORTs
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    no_leak(out, ["QUACKENBUSH", "MRN 0815"])
    assert b"M\x00R\x00N\x00" not in dst.read_bytes()
    report = report_text(out)
    assert "stored as ASCII, where the standard says LONG or SHORT" in report
    assert "13 values, where the image needs 1" in report
    with openslide.OpenSlide(str(dst)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"


def test_a_tag_the_image_needs_in_the_wrong_type_refuses_the_slide(tmp_path):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    set_text(src, 0, 259, "JPEG by Dr Who")          # Compression as text
    before = sha256(src)
    out, proc = deid(src, tmp_path, check=2)
    assert "Compression" in proc.stderr and "cannot be read without it" in proc.stderr
    assert sha256(src) == before and not [p for p in (out.iterdir() if out.exists() else [])
                                          if p.name != "wsideid-report.json"]


def deid_ndpi_with_properties(tmp_path: Path, lines: str) -> tuple[Path, str]:
    """The real NDPI with `lines` added to its property text (tag 65449) in every IFD,
    de-identified: the output folder and the released property text."""
    src = copy_of(tmp_path, "ndpi/test3-DAPI-2-387.ndpi")
    with tifffile.TiffFile(src) as tf:
        text = tf.pages[0].tags[65449].value
    planted = text.replace("slide.tickness=0", "slide.tickness=0\r\n" + lines)
    for ifd in range(6):
        set_text(src, ifd, 65449, planted)
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        return out, tf.pages[0].tags[65449].value


def test_ndpi_property_keys_under_kept_prefixes_cannot_carry_names(tmp_path):
    out, kept = deid_ndpi_with_properties(
        tmp_path, "roi.JaneQuackenbush=1,2,3,4\r\nPSHV.Zebulon=170\r\nAHEX[9].DrWho=00FF")
    no_leak(out, ["JaneQuackenbush", "Zebulon", "DrWho"])
    assert "roi.slide.macro=" in kept and "PSHV.ploidy=" in kept   # the format's own keys stay


def test_ndpi_keys_a_pattern_keeps_whose_name_announces_an_identifier_go(tmp_path):
    # made of the catalog's key words, under `roi.*`, holding only numbers (attack r09)
    out, kept = deid_ndpi_with_properties(
        tmp_path, "roi.barcode.no=48151623\r\nroi.slide.name=20240517")
    no_leak(out, ["48151623", "20240517"])
    assert "roi.slide.macro=" in kept and "roi.barcode.macro=" in kept   # listed exactly: kept
    [slide] = json.loads((out / "wsideid-report.json").read_text())["slides"]
    planted_keys = ("ndpi:roi.barcode.no", "ndpi:roi.slide.name")
    found = [f for f in slide["fields"] if f["name"] in planted_keys]
    assert found and all(f["action"] == "remove" for f in found)
    assert {"matched only by a pattern, and its name says 'barcode': an identifier",
            "matched only by a pattern, and its name says 'name': an identifier"} <= {
        f["why"] for f in found}


def test_every_catalog_pattern_follows_the_identifier_word_rule():
    from wsideid import catalog

    mirax = catalog.load("mirax")
    assert mirax.lookup("general.CAMERA_IMAGE_SIZE_X").action == "keep"
    for key in ("general.CAMERA_BARCODE_SIZE", "general.CAMERA_SERIAL_SIZE", "hier.FOCUS_DATE"):
        assert mirax.lookup(key).action == "remove", key
    ndpi = catalog.load("hamamatsu-ndpi", "properties")
    assert ndpi.lookup("roi.macro").action == "keep"
    assert ndpi.lookup("roi.barcode.no").action == "remove"
    assert catalog.load("aperio-svs").lookup("ScannerSerialID").action == "device"   # its option


# ---- a key given twice: ambiguous when the values differ ----------------------------------

REPEATED = ("repeated with different values: readers disagree on which one counts "
            "(OpenSlide keeps the last), so every copy is removed")


def _whys(out: Path, name: str) -> list[str]:
    [slide] = json.loads(report_text(out))["slides"]
    return [f["why"] for f in slide["fields"] if f["name"] == name and f["action"] == "remove"]


@pytest.mark.parametrize("key, planted, view", [
    ("AppMag", "JOHNSMITH", "objective-power"), ("MPP", "JANEDOE", "mpp-x")])
def test_an_aperio_key_repeated_with_another_value_goes_everywhere(tmp_path, key, planted, view):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    with tifffile.TiffFile(src) as tf:
        text = tf.pages[0].description
    assert f"|{key} = " in text
    set_text(src, 0, 270, f"{text}|{key} = {planted}")
    with openslide.OpenSlide(str(src)) as slide:     # OpenSlide reads the last one
        assert slide.properties.get(f"openslide.{view}") is None
    out, _ = deid(src, tmp_path)
    no_leak(out, [planted])
    [dst] = released(out)
    with openslide.OpenSlide(str(dst)) as slide:
        assert slide.properties.get(f"openslide.{view}") is None
        assert f"aperio.{key}" not in slide.properties
    assert _whys(out, f"aperio:{key}").count(REPEATED) == 2


def test_an_aperio_key_repeated_with_the_same_value_is_kept_once(tmp_path):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    with tifffile.TiffFile(src) as tf:
        text = tf.pages[0].description
    set_text(src, 0, 270, f"{text}|AppMag = 20")
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        assert tf.pages[0].description.count("AppMag = 20") == 1
    with openslide.OpenSlide(str(dst)) as slide:
        assert slide.properties["openslide.objective-power"] == "20"
    assert _whys(out, "aperio:AppMag") == ["repeated with the same value; one copy kept"]


def test_an_ndpi_property_repeated_with_another_value_goes_everywhere(tmp_path):
    src = copy_of(tmp_path, "ndpi/test3-DAPI-2-387.ndpi")
    with tifffile.TiffFile(src) as tf:
        text = tf.pages[0].tags[65449].value
    assert "Objective.Lens.Magnificant=35.16" in text
    planted = text.replace("Objective.Lens.Magnificant=35.16",
                           "Objective.Lens.Magnificant=35.16\r\nObjective.Lens.Magnificant=4711.0815")
    for ifd in range(6):
        set_text(src, ifd, 65449, planted)
    out, _ = deid(src, tmp_path)
    no_leak(out, ["4711.0815"])
    [dst] = released(out)
    with openslide.OpenSlide(str(dst)) as slide:
        assert "hamamatsu.Objective.Lens.Magnificant" not in slide.properties
    assert REPEATED in _whys(out, "ndpi:Objective.Lens.Magnificant")


def _mirax_with(tmp_path: Path, old: bytes, new: bytes) -> Path:
    from fixtures.mrxs import write_mrxs

    slide = write_mrxs(tmp_path / "in" / "S26-MRXS-0815.mrxs")
    ini = slide.with_suffix("") / "Slidedat.ini"
    raw = ini.read_bytes()
    assert old in raw
    ini.write_bytes(raw.replace(old, new, 1))
    return slide


def test_a_mirax_key_repeated_with_another_value_goes(tmp_path):
    slide = _mirax_with(tmp_path, b"SCANNER_SOFTWARE_VERSION = 1.15.3\r\n",
                        b"SCANNER_SOFTWARE_VERSION = 1.15.3\r\nSCANNER_SOFTWARE_VERSION = 4711.0815\r\n")
    out, _ = deid(slide, tmp_path)
    no_leak(out, ["4711.0815"])
    ini = next(out.rglob("Slidedat.ini")).read_bytes()
    assert b"SCANNER_SOFTWARE_VERSION" not in ini and b"OBJECTIVE_MAGNIFICATION = 20" in ini
    assert _whys(out, "mirax:general.SCANNER_SOFTWARE_VERSION") == [REPEATED]


def test_a_mirax_structure_key_repeated_with_another_value_refuses_the_slide(tmp_path):
    slide = _mirax_with(tmp_path, b"OBJECTIVE_MAGNIFICATION = 20\r\n",
                        b"OBJECTIVE_MAGNIFICATION = 20\r\nOBJECTIVE_MAGNIFICATION = 40\r\n")
    out, proc = deid(slide, tmp_path, check=2)
    assert ("Slidedat.ini: OBJECTIVE_MAGNIFICATION is repeated with different values in section "
            "[GENERAL]; readers disagree on which one counts" in proc.stderr)


def test_aperio_header_keeps_only_its_grammar(tmp_path):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    with tifffile.TiffFile(src) as tf:
        text = tf.pages[0].description
    header, rest = text.split("|", 1)
    planted = ("Aperio Image Library v11.2.1 PATIENT-DOE\r\n46000x32914 [42673,5576 2220x2967] "
               "(240x240) JPEG/RGB Q=30 MRN-12345678\r\nDr Jekyll 1234x5678|" + rest)
    set_text(src, 0, 270, planted)
    out, _ = deid(src, tmp_path)
    no_leak(out, ["PATIENT-DOE", "MRN-12345678", "Jekyll"])
    with openslide.OpenSlide(str(released(out)[0])) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert slide.properties["aperio.AppMag"] == "20"


def test_ome_annotations_keep_only_what_their_reason_needs(tmp_path):
    """Inside kept annotations (PyramidResolution, OriginalMetadata): descriptions, extra
    elements, extra attributes and records that are not Key/Value go."""
    from fixtures.ometiff import ome_xml, write_ome_tiff

    xml = ome_xml(1024, 768).replace(
        '<MapAnnotation ID="Annotation:3" Namespace="openmicroscopy.org/PyramidResolution">',
        '<MapAnnotation ID="Annotation:3" Annotator="Experimenter:Quackenbush" '
        'Namespace="openmicroscopy.org/PyramidResolution"><Description>Dr Zebulon notes</Description>'
    ).replace('<M K="1">', '<M K="case">ACC-777-QUACK</M><M K="1">').replace(
        '<OriginalMetadata><Key>AppMag</Key>',
        '<OriginalMetadata><Key>AppMag</Key><Value>20</Value><Extra>HIDDEN-DOE</Extra></OriginalMetadata>'
        '<Note>LOOSE-NOTE-DOE</Note><OriginalMetadata><Key>AppMag</Key>')
    src = write_ome_tiff(tmp_path / "x.ome.tif", xml=xml)
    out, _ = deid(src, tmp_path)
    no_leak(out, ["Quackenbush", "Zebulon", "ACC-777-QUACK", "HIDDEN-DOE", "LOOSE-NOTE-DOE"])
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        kept = tf.pages[0].description
    assert 'Namespace="openmicroscopy.org/PyramidResolution"' in kept and '<M K="1">512 384</M>' in kept


def test_ome_attributes_are_type_checked_and_must_exist_in_the_schema(tmp_path):
    from fixtures.ometiff import ome_xml, write_ome_tiff

    xml = ome_xml(1024, 768).replace('PhysicalSizeX="', 'PatientName="DOE-ATTR" PhysicalSizeX="', 1)
    xml = xml.replace('NominalMagnification="20"', 'NominalMagnification="20 (Dr Quack)"')
    src = write_ome_tiff(tmp_path / "x.ome.tif", xml=xml)
    out, _ = deid(src, tmp_path)
    no_leak(out, ["DOE-ATTR", "Dr Quack", "PatientName"])


def test_the_report_never_names_what_the_slide_made_up(tmp_path):
    """Made-up key, tag, element and attribute names reach neither the report nor stderr."""
    src = copy_of(tmp_path, "ndpi/test3-DAPI-2-387.ndpi")
    with tifffile.TiffFile(src) as tf:
        text = tf.pages[0].tags[65449].value
    set_text(src, 0, 65449, text + "\r\nZebulonQuackenbush=1\r\nroi.MaryPoppins=2\r\nDrWhoFragment")
    out, proc = deid(src, tmp_path)
    for name in ("ZebulonQuackenbush", "MaryPoppins", "DrWhoFragment"):
        assert name not in report_text(out) and name not in proc.stderr


# ---- codestreams: JPEG text segments wherever they sit -------------------------------------

def _tile_with(stream: bytes, before_eoi: bytes = b"", app0: bytes = b"") -> bytes:
    assert stream.endswith(b"\xff\xd9")
    body = stream[:2] + app0 + stream[2:-2]
    return body + before_eoi + b"\xff\xd9"


def _com(text: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text


def test_jpeg_comments_after_the_scan_data_are_removed_and_not_converted(tmp_path):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    tile = read_run(src, 0, 5)
    replace_run(src, 0, 5, _tile_with(tile, before_eoi=_com(b"TAIL-COMMENT-QUACK")))
    jfif = b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x01\x06" + b"THUMB-PLANT-QUACK!"   # a 1x6 thumbnail
    replace_run(src, 0, 7, _tile_with(read_run(src, 0, 7),
                                      app0=b"\xff\xe0" + struct.pack(">H", len(jfif) + 2) + jfif))
    with openslide.OpenSlide(str(src)) as slide:
        before = np.asarray(slide.read_region((0, 0), 0, (2220, 500)))
    out, _ = deid(src, tmp_path)
    [dst] = released(out)
    no_leak(out, ["TAIL-COMMENT-QUACK", "THUMB-PLANT-QUACK"])
    assert read_run(dst, 0, 5) == tile
    with openslide.OpenSlide(str(dst)) as slide:
        assert np.array_equal(np.asarray(slide.read_region((0, 0), 0, (2220, 500))), before)
    converted = tmp_path / "dicom"
    run("convert", src, "--to", "dicom", "-o", converted, check=0)
    no_leak(converted, ["TAIL-COMMENT-QUACK", "THUMB-PLANT-QUACK"])


def test_convert_removes_text_from_the_jpeg_tables_of_every_frame(tmp_path):
    from fixtures.svs import PLANTED, write_svs

    src = write_svs(tmp_path / "x.svs")
    converted = tmp_path / "dicom"
    run("convert", src, "--to", "dicom", "-o", converted, check=0)
    no_leak(converted, [PLANTED["tables_app"], PLANTED["tile_comment"]])


# ---- DICOM: every UID mapped, no locations -------------------------------------------------

def test_dicom_unlisted_uids_and_locations(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    files = []
    originals = []
    for i, p in enumerate(sorted(shared_slide("dicom/openslide-boxes").glob("*.dcm"))):
        ds = pydicom.dcmread(p)
        originals.append(str(ds.SOPInstanceUID))
        ds.add_new(0x00200242, "UI", originals[0])   # SOP Instance UID of Concatenation Source
        ds.add_new(0x00081190, "UR", "https://pacs.quack-hospital.example/wado/DOE")
        ds.add_new(0x00080054, "AE", "PACSQUACK")
        ds.add_new(0x00041500, "CS", ["DOEFOLDER", "SLIDE1"])
        item = pydicom.Dataset()
        item.add_new(0x00081155, "UI", "1.2.3.4.5.6.7.8.99999")
        item.add_new(0x00200242, "UI", "1.2.3.4.5.6.7.8.88888")
        ds.add_new(0x00081140, "SQ", pydicom.Sequence([item]))
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        files.append(folder / f"{i}.dcm")
    out, _ = deid(folder, tmp_path)
    no_leak(out, ["quack-hospital", "PACSQUACK", "DOEFOLDER", "1.2.3.4.5.6.7.8.99999",
                  "1.2.3.4.5.6.7.8.88888", *originals])
    outputs = sorted((out / released(out)[0].name).glob("*.dcm"))
    written = [pydicom.dcmread(p, stop_before_pixels=True) for p in outputs]
    source = [w for w in written if w.SOPInstanceUID == written[0].get((0x0020, 0x0242)).value]
    assert source, "the concatenation source reference follows its instance's new UID"
    assert written[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.6"


# ---- never lose data or leave a slide half-done ---------------------------------------------

def _tile_over_macro(src: Path) -> None:
    """A level-0 tile whose bytes are the macro's first strip (a JPEG the screen accepts): the
    macro is dropped and zeroed, so the tile cannot stay what it was and verification refuses
    the output (a tile over bytes that are no JPEG at all is refused before anything is
    written)."""
    from wsideid.containers.tiff.reader import TiffFile

    with TiffFile(src) as tiff:
        bo = tiff.byteorder
        _, _, macro_offs, macro_cnts = tiff.ifds[3].data_regions(bo)
        off_tag, cnt_tag, _, _ = tiff.ifds[0].data_regions(bo)
        offsets, counts = tiff.ifds[0].tags[off_tag], tiff.ifds[0].tags[cnt_tag]
    with open(src, "r+b") as fh:
        fh.seek(offsets.value_offset + 4)
        fh.write(struct.pack("<I", int(macro_offs[0])))
        fh.seek(counts.value_offset + 4)
        fh.write(struct.pack("<I", int(macro_cnts[0])))


def _tile_over_metadata(src: Path) -> None:
    """A level-0 tile whose bytes are the ImageDescription: the plan changes that description,
    so the tile cannot stay what it was and verification refuses the output."""
    from wsideid.containers.tiff.reader import TiffFile

    with TiffFile(src) as tiff:
        desc = tiff.ifds[0].tags[270]
        off_tag, cnt_tag, _, _ = tiff.ifds[0].data_regions(tiff.byteorder)
        offsets, counts = tiff.ifds[0].tags[off_tag], tiff.ifds[0].tags[cnt_tag]
    with open(src, "r+b") as fh:
        fh.seek(offsets.value_offset + 4)
        fh.write(struct.pack("<I", desc.value_offset))
        fh.seek(counts.value_offset + 4)
        fh.write(struct.pack("<I", desc.count))


FAIL_VERIFICATION = """
import sys
import wsideid.pipeline as pipeline
pipeline.verify = lambda *a, **k: ["level 0 tile 7 changed (injected)"]
from wsideid.cli import main
sys.argv = ["wsideid", *sys.argv[1:]]
main()
"""


def test_in_place_failure_restores_the_input_exactly(tmp_path):
    """Verification fails after the slide was patched in place: the input is put back byte for
    byte, exit 1. The failure is injected: the corrupt input this test used (a tile over the
    ImageDescription) is refused before anything is changed since issue 14 (asserted too)."""
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    before = sha256(src)
    proc = subprocess.run([sys.executable, "-c", FAIL_VERIFICATION, "deid", str(src),
                           "--in-place"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "restored" in proc.stderr, proc.stderr
    assert "tile 7 changed (injected)" in proc.stderr
    assert sha256(src) == before
    assert sorted(p.name for p in src.parent.iterdir()) == [src.name, "wsideid-report.json"]
    _tile_over_metadata(src)
    corrupt = sha256(src)
    proc = run("deid", src, "--in-place")
    assert proc.returncode == 2 and "overlaps the file's directories" in proc.stderr, proc.stderr
    assert sha256(src) == corrupt
    assert not [p for p in src.parent.iterdir() if p.name.startswith((".", "wsi-"))]


def test_a_tile_stored_in_the_macro_bytes_is_refused(tmp_path):
    """A level-0 tile whose bytes are the macro's first strip (a valid JPEG): released, the
    tile would carry the macro photograph; the slide is refused before anything is written, in
    place too."""
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    _tile_over_macro(src)
    before = sha256(src)
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out)
    assert proc.returncode == 2, proc.stderr
    assert "IFD 0: its image data lies in the bytes of IFD 3 (macro" in proc.stderr
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix == ".svs"]
    proc = run("deid", src, "--in-place")   # refused (OpenSlide's check may come first)
    assert proc.returncode == 2, proc.stderr
    assert sha256(src) == before


def test_in_place_refuses_a_symbolic_link(tmp_path):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    link = tmp_path / "link.svs"
    link.symlink_to(src)
    before = sha256(src)
    proc = run("deid", link, "--in-place")
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert sha256(src) == before and link.is_symlink()


def test_an_interrupted_in_place_run_is_restored_by_the_next(tmp_path):
    """The undo record beside the slide (left by a run killed while patching) is applied
    before anything else: the next run starts from the original slide."""
    from wsideid.containers.files import Undo, undo_record_for

    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    original = src.read_bytes()
    undo = Undo(undo_record_for(src))
    undo.keep_ranges(src, [(0, 4096), (len(original) - 100, len(original))])
    undo.seal()
    with open(src, "r+b") as fh:              # what the killed run had half written
        fh.write(b"\x00" * 4096)
        fh.truncate(len(original) - 50)
    out, proc = deid(src, tmp_path)
    assert src.read_bytes() == original
    assert "restored from its undo record" in proc.stderr
    assert not undo_record_for(src).exists() and len(released(out)) == 1


def test_in_place_verification_compares_image_data_with_the_input(tmp_path):
    """In place the input is gone after patching: kept tiles are checked against digests taken
    before, so a tile that changed would be caught (here, none did: the slide is released)."""
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    tiles = [read_run(src, 0, i) for i in (0, 17, 100)]
    run("deid", src, "--in-place", check=0)
    [dst] = [p for p in src.parent.iterdir() if p.suffix == ".svs"]
    assert [read_run(dst, 0, i) for i in (0, 17, 100)] == tiles


def test_mirax_in_place_failure_restores_every_file_and_name(tmp_path, monkeypatch):
    """In place, a MIRAX slide's data files are patched, Slidedat.ini and Index.dat replaced and
    everything renamed: when verification fails, all of it is put back exactly."""
    from fixtures.mrxs import write_mrxs
    from wsideid import pipeline
    from wsideid.containers.output import Target
    from wsideid.errors import VerificationError
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy

    case = tmp_path / "case"
    case.mkdir()
    slide = write_mrxs(case / "S26-MRXS-0815.mrxs")

    def tree() -> dict[str, str]:
        return {str(p.relative_to(case)): sha256(p) for p in sorted(case.rglob("*")) if p.is_file()}

    before = tree()
    monkeypatch.setattr(pipeline, "verify", lambda *args: ["sabotaged for the test"])
    with pytest.raises(VerificationError, match="restored"):
        pipeline.run(Job((slide,), "mirax"), pipeline.Settings(Policy(), Keyring(b"k" * 32), Target(None)))
    assert tree() == before


def test_free_text_kept_tags_must_match_their_grammar(tmp_path):
    """Make, Model and Software are kept only when they read as a maker, a model and a
    software version (the real NDPI's values do); a name typed into them goes."""
    src = copy_of(tmp_path, "ndpi/test3-DAPI-2-387.ndpi")
    set_text(src, 0, 305, "Dr Zebulon Quackenbush")
    set_text(src, 1, 272, "Jane Roe Clinic")
    out, _ = deid(src, tmp_path)
    no_leak(out, ["Zebulon", "Quackenbush", "Jane Roe"])
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        assert tf.pages[2].tags["Software"].value == "NDP.scan 2.5.89"
        assert tf.pages[2].tags["Model"].value == "C9600-12"
