"""Labels and overviews end to end, through the command line, for every format: planted
barcodes (Data Matrix, QR, Code 128, PDF417, at angles, with and without printed text) on the
label and at either end of the overview; after `--label replace --macro redact` no output
image decodes a planted value, the overview is kept with a uniform label area, the new label
decodes to the pseudonym, the users' reader shows both, and no planted value is left in any
byte. `--label keep --macro keep` releases nothing identifying either."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import all_files, found_needles, run, shared_slide
from fixtures.labels import CODES, LABEL_SIZE, PRINTED, label_picture, overview_picture
from wsideid.images.barcodes import decode_all
from wsideid.verify.associated import UNIFORM_TOLERANCE

PLANTED = list(CODES.values())
OPTIONS = ("--label", "replace", "--macro", "redact", "--no-ocr")


# ---------------------------------------------------------------- helpers

def report_of(out: Path) -> dict:
    [slide] = json.loads((out / "wsideid-report.json").read_text())["slides"]
    return slide


def only_output(out: Path, suffix: str) -> Path:
    [path] = [p for p in out.iterdir() if p.name.endswith(suffix)]
    return path


def values(pixels: np.ndarray) -> list[str]:
    return sorted({code.value for code in decode_all(pixels)})


def openslide_pictures(path: Path) -> dict[str, np.ndarray]:
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        return {name: np.asarray(image.convert("RGB"))
                for name, image in slide.associated_images.items()}


def assert_uniform(pixels: np.ndarray, blanked: dict) -> None:
    """Every blanked box reads as one colour (a few pixels in from its edge), and covers
    at least a quarter of the overview's long side (a label, not a sliver)."""
    width, height = blanked["size"]
    assert pixels.shape[:2] == (height, width)
    assert blanked["boxes"]
    for x0, y0, x1, y1 in blanked["boxes"]:
        inside = pixels[y0 + 4:y1 - 4, x0 + 4:x1 - 4].reshape(-1, 3).astype(int)
        assert (inside.max(axis=0) - inside.min(axis=0)).max() <= UNIFORM_TOLERANCE
    assert max(max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in blanked["boxes"]) >= width // 5


def blanked_of(slide: dict, role: str) -> dict:
    [entry] = [a for a in slide["associated"] if a["role"] == role]
    assert entry["action"] == "redact"
    return entry["blanked"]


def assert_released(out: Path, slide: dict, pictures: dict[str, np.ndarray],
                    overview_name: str = "macro", overview_role: str = "macro") -> None:
    """The shared promise: the new label decodes to exactly the pseudonym, the overview is
    kept, decodes to nothing and is uniform where its label was, no planted value anywhere."""
    assert slide["status"] == "ok", slide
    assert values(pictures["label"]) == [slide["pseudonym"]]
    assert values(pictures[overview_name]) == []
    assert_uniform(pictures[overview_name], blanked_of(slide, overview_role))
    for name, pixels in pictures.items():
        assert not set(values(pixels)) & set(PLANTED), name
    assert found_needles(all_files(out), PLANTED) == {}
    assert [a["new"] for a in slide["associated"] if a["role"] == "label"]


# ---------------------------------------------------------------- TIFF formats

@pytest.mark.parametrize("symbology,angle,text,ends", [
    ("DataMatrix", 0, True, ("left",)),
    ("QRCode", 17, False, ("right",)),
    ("Code128", 180, True, ("left", "right")),
    ("PDF417", 17, True, ("right",)),
])
def test_svs_label_replaced_and_macro_redacted(tmp_path, symbology, angle, text, ends):
    from fixtures.svs import SvsSpec, write_svs

    label = label_picture(*LABEL_SIZE, symbology, angle, text)
    macro = overview_picture(800, 300, ends, symbology="DataMatrix")
    assert values(label) == [CODES[symbology]]          # the plant is readable
    src = write_svs(tmp_path / "slide.svs", SvsSpec(label_pixels=label, macro_pixels=macro))
    out = tmp_path / "out"
    run("deid", src, "-o", out, *OPTIONS, check=0)
    slide = report_of(out)
    pictures = openslide_pictures(only_output(out, ".svs"))
    assert {"label", "macro", "thumbnail"} <= set(pictures)
    assert_released(out, slide, pictures)
    # what the label showed is reported by symbology, never by value
    label_entry = [a for a in slide["associated"] if a["role"] == "label"][0]
    assert label_entry["barcodes"] == [symbology]
    assert CODES[symbology] not in (out / "wsideid-report.json").read_text()


def test_gt450_svs_label_replaced_and_macro_redacted(tmp_path):
    """GT450 files have no descriptions: label and macro are known by NewSubfileType."""
    from fixtures.svs import SvsSpec, write_svs

    src = write_svs(tmp_path / "gt450.svs", SvsSpec(
        gt450=True, label_pixels=label_picture(*LABEL_SIZE, "DataMatrix", 90),
        macro_pixels=overview_picture(800, 300, ("left",), symbology="QRCode")))
    out = tmp_path / "out"
    run("deid", src, "-o", out, *OPTIONS, check=0)
    assert_released(out, report_of(out), openslide_pictures(only_output(out, ".svs")))


def test_ome_tiff_label_and_macro_images(tmp_path):
    """OME-TIFF: tifffile shows the label and macro Images; their OME-XML Pixels still say
    what the TIFF pages hold, and a plane's hash of the old pixels does not survive."""
    import tifffile

    from fixtures.ometiff import ome_xml, write_ome_tiff

    xml = ome_xml(1024, 768, True, label=LABEL_SIZE)
    at = xml.index("</TiffData>", xml.index('<Image ID="Image:1"')) + len("</TiffData>")
    xml = (xml[:at] + '<Plane TheZ="0" TheT="0" TheC="0"><HashSHA1>'
           + "0123456789abcdef" * 2 + "01234567</HashSHA1></Plane>" + xml[at:])
    src = write_ome_tiff(tmp_path / "slide.ome.tif", xml=xml,
                         label_pixels=label_picture(*LABEL_SIZE, "PDF417", 0),
                         macro_pixels=overview_picture(800, 300, ("right",)))
    out = tmp_path / "out"
    run("deid", src, "-o", out, *OPTIONS, check=0)
    slide = report_of(out)
    with tifffile.TiffFile(only_output(out, ".ome.tif")) as tif:
        series = {s.name: s for s in tif.series}
        pictures = {"label": series["label"].asarray(), "macro": series["macro"].asarray()}
        for name in ("label", "macro"):
            page = series[name].pages[0]
            assert series[name].shape == page.shape and series[name].dtype == np.uint8
        xml = tif.ome_metadata
    assert_released(out, slide, pictures)
    import re

    for name, (w, h) in (("label", LABEL_SIZE), ("macro", (800, 300))):
        image = re.search(rf'<Image [^>]*Name="{name}".*?</Image>', xml, re.S).group(0)
        assert f'SizeX="{w}"' in image and f'SizeY="{h}"' in image and 'Type="uint8"' in image
        assert 'SizeC="3"' in image and "HashSHA1" not in image


# ---------------------------------------------------------------- MIRAX

def test_mirax_label_macro_and_overview(tmp_path):
    from fixtures.mrxs import MrxsSpec, write_mrxs

    src = write_mrxs(tmp_path / "slide.mrxs", MrxsSpec(
        label_pixels=label_picture(*LABEL_SIZE, "QRCode", 17),
        macro_pixels=overview_picture(1000, 380, ("left", "right")),
        overview_pixels=overview_picture(900, 300, ("right",), symbology="QRCode")))
    out = tmp_path / "out"
    run("deid", src, "-o", out, *OPTIONS, check=0)
    slide = report_of(out)
    mrxs = only_output(out, ".mrxs")
    pictures = openslide_pictures(mrxs)
    assert {"label", "macro", "thumbnail"} <= set(pictures)
    assert_released(out, slide, pictures)
    # the whole-slide overview, which OpenSlide does not show, read back by the adapter
    from wsideid.adapters.mrxs import ADAPTER, read_slide

    output = read_slide(mrxs)
    [whole] = [i for i in ADAPTER.images(output) if i.role == "overview"]
    pixels = ADAPTER.pixels(output, whole)
    assert values(pixels) == []
    assert_uniform(pixels, blanked_of(slide, "overview"))


def test_mirax_new_label_larger_than_its_record_moves(tmp_path):
    """A plain white label is a tiny JPEG: the synthesized one does not fit its place, goes
    to the end of its data file, and the old place is zeroed (verification checks it)."""
    from fixtures.mrxs import MrxsSpec, write_mrxs
    from wsideid.adapters.mrxs import ADAPTER, read_slide

    white = np.full((LABEL_SIZE[1], LABEL_SIZE[0], 3), 250, np.uint8)
    src = write_mrxs(tmp_path / "slide.mrxs", MrxsSpec(label_pixels=white, plant=False))
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--label", "replace", "--no-ocr", check=0)

    def label_record(path: Path) -> tuple[int, int, int]:
        slide = read_slide(path)
        [label] = [i for i in ADAPTER.images(slide) if i.role == "label"]
        return (int(label.runs.offsets[0]), int(label.runs.counts[0]),
                slide.data_sizes[int(label.runs.files[0])])

    old_offset, old_length, _ = label_record(src)
    mrxs = only_output(out, ".mrxs")
    offset, length, size = label_record(mrxs)
    assert length > old_length and offset > old_offset and offset + length == size
    assert values(openslide_pictures(mrxs)["label"]) == [report_of(out)["pseudonym"]]


# ---------------------------------------------------------------- DICOM

def dicom_series(tmp_path: Path, label: np.ndarray, overview: np.ndarray) -> list[Path]:
    """A DICOM WSI series (VOLUMEs, THUMBNAIL, LABEL, OVERVIEW, JPEG baseline) written by
    wsidicomizer from a synthetic SVS, the label's value in LabelText and BarcodeValue."""
    from wsidicomizer import WsiDicomizer

    from fixtures.svs import SvsSpec, write_svs

    svs = write_svs(tmp_path / "src.svs", SvsSpec(label_pixels=label, macro_pixels=overview))
    files = [Path(f) for f in WsiDicomizer.convert(svs, tmp_path / "series", workers=1)]
    for path in files:
        ds = pydicom.dcmread(path)
        if ds.ImageType[2] == "LABEL":
            ds.LabelText = ds.BarcodeValue = CODES["DataMatrix"]
            ds.save_as(path)
    return files


def wsidicom_pictures(folder: Path) -> dict[str, np.ndarray]:
    from wsidicom import WsiDicom

    with WsiDicom.open(sorted(folder.glob("*.dcm"))) as slide:
        return {"label": np.asarray(slide.read_label().convert("RGB")),
                "overview": np.asarray(slide.read_overview().convert("RGB"))}


def headers(folder: Path) -> dict[str, pydicom.Dataset]:
    out = {}
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.setdefault(ds.ImageType[2], ds)
    return out


def test_dicom_label_replaced_and_overview_redacted(tmp_path):
    files = dicom_series(tmp_path, label_picture(*LABEL_SIZE, "DataMatrix", 17),
                         overview_picture(800, 300, ("left",), symbology="QRCode"))
    out = tmp_path / "out"
    run("deid", *files, "-o", out, *OPTIONS, check=0)
    slide = report_of(out)
    folder = out / slide["output"]
    assert_released(out, slide, wsidicom_pictures(folder), "overview", "overview")
    found = headers(folder)
    label, overview = found["LABEL"], found["OVERVIEW"]
    assert label.LabelText == label.BarcodeValue == slide["pseudonym"]
    assert label.SpecimenLabelInImage == "YES" and label.BurnedInAnnotation == "YES"
    assert (label.Rows, label.Columns) == (LABEL_SIZE[1], LABEL_SIZE[0])
    assert (label.TotalPixelMatrixRows, label.TotalPixelMatrixColumns) == (label.Rows, label.Columns)
    assert overview.SpecimenLabelInImage == "NO" and overview.BurnedInAnnotation == "NO"
    # dciodvfy: nothing new on the written LABEL; on the OVERVIEW only the one finding that
    # holds every OVERVIEW to SpecimenLabelInImage YES
    from wsideid.adapters.dicom_labels import DCIODVFY_BLANKED_OVERVIEW
    from wsideid.verify.dicom import dciodvfy_errors

    by_type = {pydicom.dcmread(p, stop_before_pixels=True).ImageType[2]: p for p in files}
    for kind in ("LABEL", "OVERVIEW"):
        written = [p for p in folder.glob("*.dcm")
                   if pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == kind][0]
        before, after = dciodvfy_errors(by_type[kind]), dciodvfy_errors(written)
        if after is None:
            pytest.skip("dciodvfy (dicom3tools) is not installed")
        new = sorted(after - before)
        # the blanked overview says NO (true after blanking), which dciodvfy flags: that one
        # finding and nothing else
        assert all(DCIODVFY_BLANKED_OVERVIEW in e for e in new) and len(new) <= 1, new
        if kind == "LABEL":
            assert new == [], new


def test_dicom_keep_keep_releases_nothing_identifying(tmp_path):
    files = dicom_series(tmp_path, label_picture(*LABEL_SIZE, "QRCode", 0),
                         overview_picture(800, 300, ("right",)))
    out = tmp_path / "out"
    run("deid", *files, "-o", out, "--label", "keep", "--macro", "keep", "--no-ocr", check=0)
    slide = report_of(out)
    folder = out / slide["output"]
    assert "LABEL" not in headers(folder)
    assert any("shows a barcode (QRCode): dropped instead of kept" in w for w in slide["warnings"])
    from wsidicom import WsiDicom

    with WsiDicom.open(sorted(folder.glob("*.dcm"))) as series:
        overview = np.asarray(series.read_overview().convert("RGB"))
    assert values(overview) == []
    assert found_needles(all_files(out), PLANTED) == {}


def test_real_dicom_label_datamatrix_decoded_reported_and_replaced(tmp_path):
    original = shared_slide("dicom/gcp-label-datamatrix/test_dicom_matrix.dcm")
    src = tmp_path / original.name
    shutil.copy(original, src)
    inspected = json.loads(run("inspect", src, "--json", "--no-ocr", check=0).stdout)
    codes = [f for f in inspected["fields"] if f["name"].startswith("barcode:")]
    assert [(f["name"], f["location"]) for f in codes] == [("barcode:DataMatrix", "instance 0")]
    value = codes[0]["value"]
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--label", "replace", "--no-ocr", check=0)
    slide = report_of(out)
    [entry] = slide["associated"]
    assert entry["barcodes"] == ["DataMatrix"] and entry["action"] == "replace"
    assert value not in (out / "wsideid-report.json").read_text()
    [path] = (out / slide["output"]).glob("*.dcm")
    from wsideid.adapters.dicom import ADAPTER
    from wsideid.model import Job

    series = ADAPTER.read(Job((path,), ADAPTER.name))
    [image] = ADAPTER.images(series)
    assert values(ADAPTER.pixels(series, image)) == [slide["pseudonym"]]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == original_syntax(original)
    assert found_needles([path], [value]) == {}


def original_syntax(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


# ---------------------------------------------------------------- conversion

def test_convert_to_dicom_replaces_the_label_and_redacts_the_overview(tmp_path):
    from fixtures.svs import SvsSpec, write_svs

    src = write_svs(tmp_path / "slide.svs", SvsSpec(
        label_pixels=label_picture(*LABEL_SIZE, "Code128", 17),
        macro_pixels=overview_picture(800, 300, ("left", "right"))))
    out = tmp_path / "out"
    run("convert", src, "--to", "dicom", "-o", out, *OPTIONS, check=0)
    slide = report_of(out)
    assert slide["status"] == "ok", slide
    folder = out / slide["output"]
    pictures = wsidicom_pictures(folder)
    assert values(pictures["label"]) == [slide["pseudonym"]]
    assert values(pictures["overview"]) == []
    found = headers(folder)
    assert found["LABEL"].LabelText == found["LABEL"].BarcodeValue == slide["pseudonym"]
    assert found["OVERVIEW"].SpecimenLabelInImage == "NO"
    # the label end of the overview is one colour in the converted instance
    for end in (slice(4, 190), slice(610, 796)):
        part = pictures["overview"][4:296, end].reshape(-1, 3).astype(int)
        assert (part.max(axis=0) - part.min(axis=0)).max() <= UNIFORM_TOLERANCE
    assert found_needles(all_files(out), PLANTED) == {}


def test_convert_keep_keep_drops_the_label_and_redacts_the_overview(tmp_path):
    from fixtures.svs import SvsSpec, write_svs

    src = write_svs(tmp_path / "slide.svs", SvsSpec(
        label_pixels=label_picture(*LABEL_SIZE, "DataMatrix", 0),
        macro_pixels=overview_picture(800, 300, ("left",))))
    out = tmp_path / "out"
    run("convert", src, "--to", "dicom", "-o", out, "--label", "keep", "--macro", "keep",
        "--no-ocr", check=0)
    slide = report_of(out)
    found = headers(out / slide["output"])
    assert "LABEL" not in found and found["OVERVIEW"].SpecimenLabelInImage == "NO"
    assert found_needles(all_files(out), PLANTED) == {}


# ---------------------------------------------------------------- keep, strict, NDPI

def test_keep_keep_on_a_barcoded_svs_releases_nothing_identifying(tmp_path):
    from fixtures.svs import SvsSpec, write_svs

    src = write_svs(tmp_path / "slide.svs", SvsSpec(
        label_pixels=label_picture(*LABEL_SIZE, "DataMatrix", 0),
        macro_pixels=overview_picture(800, 300, ("left", "right"))))
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, "--label", "keep", "--macro", "keep", "--no-ocr", check=0)
    assert "shows a barcode (DataMatrix): dropped instead of kept" in proc.stderr
    slide = report_of(out)
    pictures = openslide_pictures(only_output(out, ".svs"))
    assert "label" not in pictures
    assert values(pictures["macro"]) == []
    assert_uniform(pictures["macro"], blanked_of(slide, "macro"))
    assert found_needles(all_files(out), PLANTED) == {}


def test_strict_fails_the_slide_instead(tmp_path):
    from fixtures.svs import SvsSpec, write_svs

    src = write_svs(tmp_path / "slide.svs", SvsSpec(
        label_pixels=label_picture(*LABEL_SIZE, "QRCode", 0)))
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, "--label", "keep", "--strict", "--no-ocr")
    assert proc.returncode != 0
    assert "--strict: the label image" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["wsideid-report.json"]


def test_real_ndpi_macro_label_blanked_and_no_label_said(tmp_path):
    """The NanoZoomer macro shows a printed label without a barcode: its area is found (the
    scanner's barcode box and the label band) and blanked; NDPI has no label image, and
    --label replace says so."""
    original = shared_slide("ndpi/test3-DAPI-2-387.ndpi")
    src = tmp_path / original.name
    shutil.copy(original, src)
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, "--label", "replace", "--macro", "redact", "--no-ocr",
               check=0)
    assert "NDPI has no label image" in proc.stderr
    slide = report_of(out)
    blanked = blanked_of(slide, "macro")
    macro = openslide_pictures(only_output(out, ".ndpi"))["macro"]
    assert_uniform(macro, blanked)
    # the band reaches from the slide's end over the printed label
    width = blanked["size"][0]
    assert any(x0 == 0 and x1 >= width // 4 for x0, _, x1, _ in blanked["boxes"])
    from wsideid.images import ocr

    if ocr.available():
        words = {w for line in ocr.read_text(macro) or [] for w in line.split() if len(w) >= 4
                 and any(c.isalnum() for c in w)}
        assert not words, words


# ---------------------------------------------------------------- verification is honest

def test_verification_fails_a_macro_left_unblanked(tmp_path, monkeypatch):
    """If the container did not write the blanked overview, the independent decode of the
    output catches it and the slide is not released."""
    from fixtures.svs import SvsSpec, write_svs
    from wsideid import adapters, pipeline
    from wsideid.adapters.tiff import TiffAdapter
    from wsideid.containers.output import Target
    from wsideid.errors import VerificationError
    from wsideid.keyring import Keyring
    from wsideid.model import Job, RedactImage
    from wsideid.policy import Policy

    src = write_svs(tmp_path / "slide.svs", SvsSpec(
        macro_pixels=overview_picture(800, 300, ("left",))))
    original = TiffAdapter._new_image

    def forgetful(self, ctx, new):
        if not isinstance(new, RedactImage):
            original(self, ctx, new)
    monkeypatch.setattr(TiffAdapter, "_new_image", forgetful)
    job = Job((src,), adapters.detect(src).name)
    (tmp_path / "out").mkdir()
    settings = pipeline.Settings(Policy(macro="redact", ocr=False), Keyring(bytes(32)),
                                 Target(tmp_path / "out"))
    with pytest.raises(VerificationError, match="barcode still decodes on the kept macro"):
        pipeline.run(job, settings)
    assert list((tmp_path / "out").iterdir()) == []


def test_verification_checks_each_expectation():
    from wsideid.verify.associated import Expected, check

    pseudonym = "wsi-abcdefghijklmnop"
    label = label_picture(*LABEL_SIZE, "DataMatrix", 0, value=pseudonym)
    wrong = label_picture(*LABEL_SIZE, "DataMatrix", 0, value="wsi-someoneelse0000")
    plain = np.full((300, 800, 3), 200, np.uint8)
    area = {"boxes": [[0, 0, 200, 300]], "size": [800, 300]}
    assert check({"label": label, "macro": plain},
                 {"label": Expected(replaced=True), "macro": Expected(area=area)}, pseudonym) == []
    assert "not decode to the pseudonym" in check({"label": wrong}, {"label": Expected(True)},
                                                  pseudonym)[0]
    noisy = plain.copy()
    noisy[100:120, 50:150] = 20
    assert "not uniform" in check({"macro": noisy}, {"macro": Expected(area=area)}, pseudonym)[0]
    assert "still decodes" in check({"thumbnail": label}, {"thumbnail": Expected()}, pseudonym)[0]
    assert "does not show it" in check({}, {"label": Expected(True)}, pseudonym)[0]


def test_printed_text_is_planted_in_pixels_only():
    """The fixture's printed name is a picture, not bytes: searching bytes for it proves
    nothing, which is why every test decodes pictures."""
    picture = label_picture(*LABEL_SIZE, "QRCode", 0, True)
    assert PRINTED.encode() not in picture.tobytes()


@pytest.mark.parametrize("fmt", ["svs", "mrxs"])
def test_in_place_label_replaced_and_macro_redacted(tmp_path, fmt):
    """In place, the new label and the blanked macro are patched into the slide itself (a
    MIRAX label that outgrows its record is appended to its data file)."""
    if fmt == "svs":
        from fixtures.svs import SvsSpec, write_svs

        src = write_svs(tmp_path / "slide.svs", SvsSpec(
            label_pixels=label_picture(*LABEL_SIZE, "QRCode", 17),
            macro_pixels=overview_picture(800, 300, ("left", "right"))))
    else:
        from fixtures.mrxs import MrxsSpec, write_mrxs

        src = write_mrxs(tmp_path / "slide.mrxs", MrxsSpec(
            label_pixels=np.full((LABEL_SIZE[1], LABEL_SIZE[0], 3), 250, np.uint8),
            macro_pixels=overview_picture(1000, 380, ("left",))))
    run("deid", src, "--in-place", *OPTIONS, "--report", tmp_path / "report.json", check=0)
    [slide] = json.loads((tmp_path / "report.json").read_text())["slides"]
    [written] = [p for p in tmp_path.iterdir() if p.name.startswith("wsi-") and p.is_file()]
    pictures = openslide_pictures(written)
    assert values(pictures["label"]) == [slide["pseudonym"]]
    assert values(pictures["macro"]) == []
    assert_uniform(pictures["macro"], blanked_of(slide, "macro"))
    assert found_needles(all_files(tmp_path / written.name.split(".")[0]) + [written]
                         if fmt == "mrxs" else [written], PLANTED) == {}


def test_convert_mirax_overview_is_the_macro_blanked(tmp_path):
    """MIRAX has two overviews (the macro and the whole-slide picture, of other sizes): the
    converted OVERVIEW is the macro, blanked where the macro's label is."""
    from fixtures.mrxs import MrxsSpec, write_mrxs

    src = write_mrxs(tmp_path / "slide.mrxs", MrxsSpec(
        label_pixels=label_picture(*LABEL_SIZE, "QRCode", 17),
        macro_pixels=overview_picture(1000, 380, ("left",)),
        overview_pixels=overview_picture(900, 300, ("right",))))
    out = tmp_path / "out"
    run("convert", src, "--to", "dicom", "-o", out, *OPTIONS, "--allow-transcode", check=0)
    slide = report_of(out)
    pictures = wsidicom_pictures(out / slide["output"])
    assert values(pictures["label"]) == [slide["pseudonym"]]
    overview = pictures["overview"]
    assert overview.shape[:2] == (380, 1000) and values(overview) == []
    part = overview[4:376, 4:240].reshape(-1, 3).astype(int)
    assert (part.max(axis=0) - part.min(axis=0)).max() <= UNIFORM_TOLERANCE
    # the macro's right end is glass: left as it was (the whole-slide picture's label sits
    # there, and its boxes are not the macro's)
    glass = overview[40:340, 800:990].reshape(-1, 3).astype(int)
    assert (glass.max(axis=0) - glass.min(axis=0)).max() > UNIFORM_TOLERANCE
    assert found_needles(all_files(out), PLANTED) == {}


# ---------------------------------------------------------------- OCR not run

@pytest.mark.parametrize("options, expect", [
    (("--label", "keep"), ["the label image (IFD 2)"]),
    (("--macro", "redact"), ["the macro image (IFD 3)"]),
    (("--label", "keep", "--macro", "keep"),
     ["the label image (IFD 2)", "the macro image (IFD 3)"]),
    (("--label", "replace"), []),
])
def test_a_label_or_overview_released_unread_says_so(tmp_path, options, expect):
    src = tmp_path / "in" / "slide.svs"
    src.parent.mkdir()
    shutil.copy(shared_slide("svs/CMU-1-Small-Region.svs"), src)
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, *options, "--no-ocr", check=0)
    lines = [w for w in report_of(out)["warnings"] if w.startswith("OCR was not run (--no-ocr)")]
    stderr = [line for line in proc.stderr.splitlines() if "OCR was not run" in line]
    if not expect:
        assert lines == [] and stderr == []
        return
    [line] = lines
    assert all(image in line for image in expect) and "CMU-1" not in line
    assert len(stderr) == 1 and stderr[0].endswith(line)


def test_a_faint_code_on_a_large_kept_label_is_not_released(tmp_path):
    """A QR code 4 grey levels from the ground of an 800 x 300 label, `--label keep`: the
    label is dropped instead (and `--strict` refuses the slide); the value is in no output
    byte. Before the fix the label was released as it was."""
    import zxingcpp
    from fixtures.svs import SvsSpec, write_svs

    value = "LAB-FAINT-4711"
    code = np.asarray(zxingcpp.create_barcode(value, zxingcpp.BarcodeFormat.QRCode)
                      .to_image(scale=3, add_quiet_zones=True)).astype(float) / 255
    label = np.full((300, 800), 200.0)
    label[10:10 + code.shape[0], 10:10 + code.shape[1]] = 196 + 4 * code
    label = np.repeat(label.astype(np.uint8)[:, :, None], 3, axis=2)
    (tmp_path / "in").mkdir()
    src = write_svs(tmp_path / "in" / "slide.svs", SvsSpec(plant=False, macro=False,
                                                            label_pixels=label))
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, "--label", "keep", "--no-ocr", check=0)
    assert "the label image" in proc.stderr and "dropped instead of kept" in proc.stderr
    assert "label" not in openslide_pictures(only_output(out, ".svs"))
    assert not found_needles(all_files(out), [value])
    strict = run("deid", src, "-o", tmp_path / "strict", "--label", "keep", "--no-ocr",
                 "--strict")
    assert strict.returncode == 2 and "--strict" in strict.stderr
