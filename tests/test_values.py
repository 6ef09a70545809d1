"""Every kept value is validated: identifiers planted in values the catalogs keep (free text,
loose grammars, binary values, key names, library messages) must not survive anywhere in the
output, its paths, the audit report, stdout or stderr; what readers need still survives."""
from __future__ import annotations

import io
import re
import shutil
import struct
import tomllib
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import tifffile

from conftest import ROOT, all_files, found_needles, run, shared_slide
from tiffpatch import set_tag, set_text

# pydicom warns (with the value) when the tests plant bad values; the tool's own are withheld
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NAME = "Zebulon Quackenbush"
MRN = "MRN-4711-0815"
NEEDLES = ["Zebulon", "Quackenbush", "4711-0815", "4711.0815", "4711_0815", "4711 0815",
           "19850412", "1985/04/12", "zeb@example", "evil.example"]


def copy_of(tmp_path: Path, rel: str) -> Path:
    src = tmp_path / Path(rel).name
    shutil.copy(shared_slide(rel), src)
    src.chmod(0o644)
    return src


def deid_and_search(src: Path, tmp_path: Path, *options, check: int | None = 0,
                    needles=NEEDLES) -> tuple[Path, dict]:
    """De-identify through the CLI; every needle searched in every output byte and path, the
    report, stdout and stderr."""
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, *options, check=check)
    hits = found_needles(all_files(out), needles) if out.exists() else {}
    for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        found = [n for n in needles if n.lower() in text.lower()]
        if found:
            hits[stream] = found
    return out, hits


def released(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.name not in ("wsideid-report.json", ".wsideid"))


def add_tag(path: Path, ifd: int, code: int, dtype: int, data: bytes) -> None:
    """Add (or replace) a tag of main-chain IFD `ifd` of a classic little-endian TIFF: the IFD
    is written again at the end of the file with the entry, its predecessor pointed at it."""
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 11: 4, 12: 8}
    with open(path, "r+b") as fh:
        assert fh.read(4) == b"II*\x00"
        pointer, offset = 4, struct.unpack("<I", fh.read(4))[0]
        for _ in range(ifd):
            fh.seek(offset)
            n = struct.unpack("<H", fh.read(2))[0]
            pointer = offset + 2 + 12 * n
            fh.seek(pointer)
            offset = struct.unpack("<I", fh.read(4))[0]
        fh.seek(offset)
        n = struct.unpack("<H", fh.read(2))[0]
        entries = [fh.read(12) for _ in range(n)]
        following = fh.read(4)
        entries = [e for e in entries if struct.unpack("<H", e[:2])[0] != code]
        end = fh.seek(0, 2)
        end += (-end) % 4
        if len(data) > 4:
            fh.seek(end)
            fh.write(data)
            value, end = struct.pack("<I", end), end + len(data) + (-len(data)) % 4
        else:
            value = data.ljust(4, b"\x00")
        entries.append(struct.pack("<HHI", code, dtype, len(data) // sizes[dtype]) + value)
        entries.sort(key=lambda e: struct.unpack("<H", e[:2])[0])
        fh.seek(end)
        fh.write(struct.pack("<H", len(entries)) + b"".join(entries) + following)
        fh.seek(pointer)
        fh.write(struct.pack("<I", end))


def spelled(text: str, count: int, size: int = 2) -> bytes:
    """`count` values of `size` bytes whose bytes spell `text` over and over."""
    raw = text.encode()
    return (raw * (count * size // len(raw) + 1))[:count * size]


# -- the rule: no kept free text ----------------------------------------------------------------

def test_every_kept_catalog_entry_has_a_grammar():
    """Every catalog entry that keeps a value (keep, device, date kept with --dates shift)
    says what the value looks like: a grammar, a vocabulary, or for a binary TIFF tag a
    fixed count or a rule of its own. Bare `text` is not a type anyone may keep."""
    from wsideid import catalog
    from wsideid.adapters import ome_schema, tiff_values
    from wsideid.adapters.ometiff import REPLACED_ATTRIBUTES, attribute_type

    kept_actions = ("keep", "device", "date")
    missing = []
    for path in sorted((ROOT / "formats").glob("*.toml")):
        data = tomllib.loads(path.read_text())
        for section, entries in data.items():
            if section in ("catalog", "types", "key_names", "attribute_types", "attributes",
                           "annotations", "records", "elements", "schemes", "codes", "cs", "text"):
                continue
            cat = catalog.Catalog(path.name, section)
            for key, entry in cat.entries():
                if entry.action not in kept_actions:
                    continue
                if entry.tiff_type and "ASCII" not in entry.tiff_type:
                    if entry.count in (None, "any") and entry.type not in tiff_values.RULES:
                        missing.append(f"{path.name} [{section}] {key}: binary, any count, no rule")
                elif not catalog.has_grammar(entry):
                    missing.append(f"{path.name} [{section}] {key}: type {entry.type}")
    # OME: every attribute a kept element keeps has a type (or is written by the tool)
    elements = catalog.Catalog("ome-tiff.toml", "elements")
    for name, entry in elements.entries():
        if entry.action != "keep":
            continue
        assert isinstance(entry.attributes, tuple), f"ome-tiff.toml {name}: attributes must be listed"
        for attribute in entry.attributes:
            kind = attribute_type(name, attribute)
            if (name, attribute) in REPLACED_ATTRIBUTES:
                continue
            if kind in catalog.VOCABULARY_TYPES:
                if ome_schema.enumeration(name, attribute) is None:
                    missing.append(f"ome-tiff.toml {name}@{attribute}: no enumeration in the schema")
            elif catalog.grammar_of(kind) is None:
                missing.append(f"ome-tiff.toml {name}@{attribute}: type {kind}")
    # DICOM: every kept text element has a grammar; every scheme a value shape
    from wsideid.adapters import dicom_values

    for keyword, rule in dicom_values.table()["text"].items():
        if dicom_values.grammar(rule["type"]) is None:
            missing.append(f"dicom-values.toml {keyword}: type {rule['type']}")
    for scheme, shape in dicom_values.table()["schemes"].items():
        re.compile(shape)
    assert missing == []


def test_grammars_refuse_names_dates_and_record_numbers():
    from wsideid.catalog import has_type

    refused = {
        "software": ["QuPath (Zebulon Quackenbush)", "Zebulon 1.0", "NDP.scan 1985.04.12"],
        "model": [MRN, "S26-PLANT-4711", "ZQ 4711-0815", NAME, "NanoZoomer Zebulon"],
        "version": ["1.0 (Zebulon)", "1985.04.12", "4711-0815", "4711.0815", "1.2.3.4.5"],
        "numbers": ["1985/04/12 4711-0815", "12/29/09", "4711-0815", "1 2", "0,a"],
        "serial": [NAME, "zebulon", "QUACKENBUSH"],
        "timezone": [NAME, "GMT+01:00 4711"],
        "fluor": [NAME, "DAPI Zebulon"],
        "filter_name": [NAME, MRN],
        "objective": [NAME, "Plan Zebulon"],
        "icc_name": [NAME],
        "channel": [NAME],
        "lsid": ["Image:Quackenbush", "urn:lsid:zeb@example.org:Instrument:0", "Image:19850412"],
    }
    accepted = {
        "software": ["NDP.scan 2.5.89", "OME Bio-Formats 6.7.0", "Aperio Image Library v12.0.15"],
        "model": ["C9600-12", "C13210-01", "GT450 DX", "CIS VCC-FC60FR19CL", "NanoZoomer S360"],
        "version": ["1.0", "1.15.3", "01.03", "v10.0.51"],
        "numbers": ["0", "68,279,1256,685", "-3", "35.16", "1,7392,0,100"],
        "serial": ["950291", "SS-1234", "NDPSN-778899"],
        "timezone": ["GMT+01:00", "UTC", "-0500"],
        "fluor": ["DAPI 2 (387) ", "BF ", "FITC"],
        "filter_name": ["DA/FI/TR/Cy5-4X", "387/11-25", "--- none ---", ""],
        "objective": ["Plan-Apochromat", "Plan 20x", "Plan-Apochromat 20x/0.8 M27"],
        "icc_name": ["ScanScope v1", "AT2", "IEC 61966-2.1 Default RGB colour space - sRGB"],
        "channel": ["DAPI", "Red", "Channel 1"],
        "lsid": ["Image:0", "Channel:0:0"],
    }
    for kind, values in refused.items():
        assert [v for v in values if has_type(v, kind)] == [], kind
    for kind, values in accepted.items():
        assert [v for v in values if not has_type(v, kind)] == [], kind
    assert not has_type("anything at all", "text")


@pytest.mark.parametrize("catalog_name, section, key, known", [
    ("hamamatsu-ndpi", "properties", "roi.4711.0815", False),
    ("hamamatsu-ndpi", "properties", "PSHV[19850412]", False),
    ("hamamatsu-ndpi", "properties", "roi.Z.Q", False),
    ("hamamatsu-ndpi", "properties", "roi.slide.macro", True),
    ("hamamatsu-ndpi", "properties", "MHLN[0].24bit", True),
    ("hamamatsu-ndpi", "properties", "PSHV.ploidy.10x", True),
    ("hamamatsu-ndpi", "properties", ";ShadingAveR_2048", True),
    ("mirax", "fields", "level.IMAGE_SIZE_4711_0815", False),
    ("mirax", "fields", "general.CAMERA_4711_0815_SIZE", False),
    ("mirax", "records", "VIMSLIDE_POSITION_BUFFER/4711 0815", False),
    ("mirax", "records", "VIMSLIDE_POSITION_BUFFER/default", True),
    ("mirax", "records", "StitchingIntensityLayer/StitchingIntensityLevel_0", True),
])
def test_wildcard_key_names_admit_only_the_vendors_words_and_numbers(catalog_name, section, key, known):
    from wsideid import catalog

    assert catalog.load(catalog_name, section).knows(key) is known


def test_a_removed_value_inside_a_kept_value_is_searched_for():
    from wsideid.needles import usable

    targets = usable(["Zebulon", "4711-0815", "20", "slide", "None", "101000"],
                     ["QuPath Zebulon", "SS-4711-0815", "20", "Slide zoom level", "--- none ---"],
                     written=["19000101000000"])
    assert targets == ["4711-0815", "Zebulon"]


def test_numbers_with_the_digits_of_a_record_number_or_a_date_are_not_kept():
    from wsideid import catalog

    for planted in ("4815162342", "123456789", "20190314", "0004815162342", "1,20190314",
                    "-4815162342.5"):
        assert catalog.record_number_in(planted) and not catalog.has_type(planted, "numbers")
    # what slides hold: sizes, counts, offsets in nanometres, long DICOM fractions, exponents
    for real in ("46920", "-4563488", "99999999", "0.000243902439024", "1.4e+004", "25.691574",
                 "46920,33014", "12345678"):
        assert not catalog.record_number_in(real) and catalog.has_type(real, "numbers")


def test_svs_numeric_keys_holding_a_record_number_or_a_date(tmp_path):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    with tifffile.TiffFile(src) as tf:
        description = tf.pages[0].description
    set_text(src, 0, 270, description.replace("Left = 25.691574", "Left = 4815162342")
             .replace("StripeWidth = 2040", "StripeWidth = 19850412"))
    out, hits = deid_and_search(src, tmp_path, needles=NEEDLES + ["4815162342"])
    assert hits == {}
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        kept = tf.pages[0].description
    assert "Top = 23.449873" in kept and "MPP = 0.4990" in kept


def test_dicom_numbers_holding_a_record_number_or_a_date(tmp_path):
    def edit(ds):
        ds.SeriesNumber = "4815162342"
        ds.AcquisitionNumber = "19850412"

    folder = _dicom(tmp_path, edit)
    out, hits = deid_and_search(folder, tmp_path, needles=NEEDLES + ["4815162342"])
    assert hits == {}
    [series] = released(out)
    ds = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
    assert ds.InstanceNumber is not None and str(ds.get("SeriesNumber", "")) in ("", "None")


# -- ICC profiles -----------------------------------------------------------------------------

def _tcga_profile() -> bytes:
    with tifffile.TiffFile(shared_slide("svs/tcga-cr-7395-01a-01-ts1.svs")) as tf:
        return tf.pages[0].tags[34675].value


def _planted_profile() -> bytes:
    """The real profile with a name in its copyright text, its maker and creator fields, and
    text after its last tag."""
    profile = bytearray(_tcga_profile())
    at = profile.find(b"Copyright (c) 1998 Hewlett-Packard Company")
    profile[at:at + 42] = f"{NAME} {MRN}".ljust(42).encode()
    profile[48:52] = b"ZEBU"
    profile[80:84] = b"QUAC"
    profile += f"{NAME}".encode().ljust(24, b"\0")
    profile[0:4] = struct.pack(">I", len(profile))
    return bytes(profile)


def test_icc_profile_is_rebuilt_from_its_colour_tags():
    from PIL import Image, ImageCms

    from wsideid import icc

    original = _tcga_profile()
    cleaned = icc.clean(_planted_profile())
    data = cleaned.data
    assert all(n.encode() not in data for n in ("Zebulon", "Quackenbush", "4711", "ZEBU", "QUAC"))
    assert f"{NAME} {MRN}" in cleaned.texts
    assert icc.clean(data).data == data                    # idempotent
    pixels = Image.fromarray(np.random.RandomState(1).randint(0, 256, (32, 32, 3), np.uint8))
    lab = ImageCms.createProfile("LAB")

    def to_lab(profile: bytes) -> np.ndarray:
        transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                            ImageCms.ImageCmsProfile(lab), "RGB", "LAB")
        return np.asarray(ImageCms.applyTransform(pixels, transform))

    assert (to_lab(original) == to_lab(data)).all()
    for broken in (b"\0" * 128 + NAME.encode() + b"\0" * 16, original[:200], b"acsp" * 40):
        with pytest.raises(icc.IccError):
            icc.clean(broken)


def _with_tag(profile: bytes, signature: bytes, data: bytes) -> bytes:
    """The profile with one more tag, stored after the others."""
    count = struct.unpack(">I", profile[128:132])[0]
    table = profile[132:132 + 12 * count]
    shift = 12   # the table grows by one entry: every stored tag moves
    entries = b"".join(struct.pack(">4sII", table[i:i + 4], struct.unpack(">I", table[i + 4:i + 8])[0]
                                   + shift, struct.unpack(">I", table[i + 8:i + 12])[0])
                       for i in range(0, len(table), 12))
    body = profile[132 + 12 * count:]
    at = 132 + 12 * (count + 1) + len(body)
    at += -at % 4
    out = bytearray(profile[:128] + struct.pack(">I", count + 1) + entries
                    + struct.pack(">4sII", signature, at, len(data)) + body)
    out += bytes(at - len(out)) + data
    out[0:4] = struct.pack(">I", len(out))
    return bytes(out)


def _lut8(text: bytes) -> bytes:
    """A lut8Type A2B0 (ICC.1:2010 10.9) of three channels on a 2-point grid, its input tables
    spelling `text` (a layout that checks out: only its bytes say otherwise)."""
    identity = struct.pack(">9i", *(65536 if i % 4 == 0 else 0 for i in range(9)))
    tables = bytes(range(256))
    planted = (text * 4)[:256]
    return (b"mft1\0\0\0\0" + bytes([3, 3, 2, 0]) + identity + planted + tables + tables
            + bytes(range(0, 240, 10)) + tables * 3)


def test_icc_lookup_tables_are_left_out_whatever_they_hold():
    """A lookup table's shaper tables and grid are arbitrary bytes: a table spelling a name
    is left out with every other lookup table, an identity one too (its letters 'abcd'... would
    else match short removed values); a profile defined only by lookup tables is refused."""
    from wsideid import icc

    planted = _with_tag(_tcga_profile(), b"A2B0", _lut8(f"{NAME} {MRN} ".encode()))
    identity = _with_tag(_tcga_profile(), b"B2A0", _lut8(bytes(range(256))))
    for profile in (planted, identity):
        cleaned = icc.clean(profile)
        assert NAME.encode() not in cleaned.data and bytes(range(97, 123)) not in cleaned.data
        assert cleaned.data == icc.clean(_tcga_profile()).data   # matrix and curves kept
    lut_only = bytearray(_tcga_profile()[:128]) + struct.pack(">I", 1)
    lut_only += struct.pack(">4sII", b"A2B0", 144, len(_lut8(b"x")))
    lut_only += _lut8(NAME.encode())
    lut_only[0:4] = struct.pack(">I", len(lut_only))
    with pytest.raises(icc.IccError, match="lookup"):
        icc.clean(bytes(lut_only))


def test_svs_icc_profile_with_a_planted_lookup_table_keeps_its_matrix(tmp_path):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    add_tag(src, 0, 34675, 7, _with_tag(_tcga_profile(), b"A2B0",
                                        _lut8(f"{NAME} {MRN} ".encode())))
    out, hits = deid_and_search(src, tmp_path)
    assert hits == {}
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        kept = tf.pages[0].tags[34675].value
    assert kept[36:40] == b"acsp" and b"rTRC" in kept and b"A2B0" not in kept


# -- end to end, format by format --------------------------------------------------------------

def test_svs_kept_keys_binary_values_and_relaxed_options(tmp_path):
    """Aperio keys kept with a grammar (ICC Profile; Time Zone with --dates shift; ScanScope ID
    with --keep-device-id), a digit tail after a shifted date, an ICC profile with a name in
    its text tags, a ColorMap in an RGB image, TransferFunction and GrayResponseCurve arrays."""
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    with tifffile.TiffFile(src) as tf:
        description = tf.pages[0].description
    planted = (description.replace("Date = 12/29/09", f"Date = 12/29/09 4711-0815")
               .replace("ScanScope ID = CPAPERIOCS", f"ScanScope ID = {NAME}")
               + f"|ICC Profile = {NAME} {MRN}|Time Zone = {NAME}")
    set_text(src, 0, 270, planted)
    add_tag(src, 0, 34675, 7, _planted_profile())
    add_tag(src, 0, 320, 3, spelled(f"{NAME} {MRN} ", 768))
    add_tag(src, 0, 301, 3, spelled(f"{NAME} {MRN} ", 256))
    add_tag(src, 0, 291, 3, spelled(f"{NAME} {MRN} ", 256))
    add_tag(src, 0, 318, 5, spelled("Zebulon ", 4, 4))          # WhitePoint: 2 rationals
    add_tag(src, 0, 532, 5, spelled("Quackenbush 4711-0815 ", 12, 4))  # ReferenceBlackWhite
    out, hits = deid_and_search(src, tmp_path, "--dates", "shift", "--keep-device-id",
                                needles=NEEDLES + ["Zebulon "])
    assert hits == {}
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        tags = tf.pages[0].tags
        assert not {320, 301, 291, 318, 532} & set(tags.keys())
        assert tags[34675].value[36:40] == b"acsp"       # the rebuilt profile stays
        kept = tf.pages[0].description
    assert "AppMag = 20" in kept and "MPP = 0.499" in kept
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(dst)) as b:
        assert a.level_dimensions == b.level_dimensions
        assert b.properties["openslide.mpp-x"] == a.properties["openslide.mpp-x"]
        assert b.properties["openslide.objective-power"] == "20"


def test_svs_malformed_icc_profile_is_removed(tmp_path):
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    add_tag(src, 0, 34675, 7, b"\0" * 128 + f"{NAME} {MRN}".encode() + b"\0" * 16)
    out, hits = deid_and_search(src, tmp_path)
    assert hits == {}
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        assert 34675 not in tf.pages[0].tags
    assert "ICC profile refused" in (out / "wsideid-report.json").read_text()


def test_ndpi_tags_properties_arrays_and_key_names(tmp_path):
    """Tag 65434 and 65448 text, Software and Model, shading block names, numbers that are a
    date, key names with a date or record number, FocusPoints spelling a name."""
    src = copy_of(tmp_path, "ndpi/test3-DAPI-2-387.ndpi")
    with tifffile.TiffFile(src) as tf:
        props = tf.pages[0].tags[65449].value
        count = len(tf.pages)
    planted = (props.replace("Name=DAPI 2 (387) ", f"Name={NAME}")
               .replace("CubeName=DA/FI/TR/Cy5-4X", f"CubeName={MRN}")
               .replace("ExcitationNameSubstitution=--- none ---", f"ExcitationNameSubstitution={NAME}")
               .replace("TransmittanceR=-", f"TransmittanceR={NAME}")
               .replace("Product=C9600-12", f"Product={MRN} ZQ")
               .replace("system.version=1.0", "system.version=1.0 (Zebulon)")
               .replace("slide.tickness=0", "slide.tickness=1985/04/12 4711-0815\r\n"
                        "roi.4711.0815=1,2,3,4\r\nPSHV[19850412]=7"))
    for i in range(count):
        set_text(src, i, 65449, planted)
        set_text(src, i, 305, f"NDP.scan ({NAME})")
        set_text(src, i, 272, MRN)
    for i in range(4):
        set_text(src, i, 65434, f"{NAME} {MRN}")
    for i in range(count):
        set_tag(src, i, 65439, 9, spelled(f"{NAME} {MRN} ", 9, 4))
    out, hits = deid_and_search(src, tmp_path)
    assert hits == {}
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        page = tf.pages[0]
        assert 65439 not in page.tags and 65440 not in page.tags
        kept = page.tags[65449].value
    assert "roi.slide.macro=68,279,1256,685" in kept and "EmissionWaveLength=455" in kept
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(dst)) as b:
        assert a.level_dimensions == b.level_dimensions
        assert a.properties["openslide.objective-power"] == b.properties["openslide.objective-power"]


def test_ndpi_firmware_version_is_a_version(tmp_path):
    """65448 FirmwareVersion (the real slide has none: its FocusOffset entry becomes one)."""
    from wsideid.containers.tiff.reader import TiffFile

    src = copy_of(tmp_path, "ndpi/test3-DAPI-2-387.ndpi")
    with TiffFile(src) as tiff:
        entries = [tiff.ifds[i].tags[65446].entry_offset for i in range(len(tiff.ifds))
                   if 65446 in tiff.ifds[i].tags]
    with open(src, "r+b") as fh:
        for at in entries:
            fh.seek(at)
            fh.write(struct.pack("<H", 65448))
    for i in range(len(entries)):
        set_text(src, i, 65448, f"{NAME} {MRN}")
    _, hits = deid_and_search(src, tmp_path)
    assert hits == {}


def _mrxs(tmp_path: Path, edit) -> Path:
    from fixtures.mrxs import MrxsSpec, write_mrxs

    src = write_mrxs(tmp_path / "in" / "s.mrxs", MrxsSpec(plant=False))
    ini = src.with_suffix("") / "Slidedat.ini"
    ini.write_bytes(edit(ini.read_bytes()))
    return src


def test_mirax_values_and_key_names(tmp_path):
    name = NAME.encode()
    src = _mrxs(tmp_path, lambda raw: (
        raw.replace(b"OBJECTIVE_NAME = Plan-Apochromat", b"OBJECTIVE_NAME = " + name)
        .replace(b"FILTER_NAME = RGB", b"FILTER_NAME = " + name)
        .replace(b"CAMERA_TYPE = CIS VCC-FC60FR19CL", b"CAMERA_TYPE = MRN 4711-0815 ZQ")
        .replace(b"IMAGE_CONCAT_FACTOR = 0", b"IMAGE_CONCAT_FACTOR = 0\r\nIMAGE_CHANNEL = " + name
                 + b"\r\nCOMPRESSION = " + name + b"\r\nIMAGE_SIZE_4711_0815 = 1")
        .replace(b"OBJECTIVE_MAGNIFICATION = 20", b"OBJECTIVE_MAGNIFICATION = 20\r\n"
                 b"CAMERA_4711_0815_SIZE = 5\r\nSLIDE_QUACKENBUSH_DATETIME = 14/03/2021 13:37:42")))
    out, hits = deid_and_search(src, tmp_path, "--dates", "shift")
    assert hits == {}
    [mrxs] = [p for p in released(out) if p.suffix == ".mrxs"]
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(mrxs)) as b:
        assert a.level_dimensions == b.level_dimensions
        assert a.properties["openslide.mpp-x"] == b.properties["openslide.mpp-x"]


def test_mirax_position_record_with_a_made_up_name(tmp_path):
    src = _mrxs(tmp_path, lambda raw: raw.replace(b"NONHIER_1_VAL_0 = default",
                                                  b"NONHIER_1_VAL_0 = 4711 0815"))
    ini = (src.with_suffix("") / "Slidedat.ini").read_bytes()
    assert b"4711 0815" in ini
    _, hits = deid_and_search(src, tmp_path)
    assert hits == {}


def _ome(tmp_path: Path, edit) -> Path:
    from fixtures.ometiff import ome_xml, write_ome_tiff

    src = tmp_path / "x.ome.tif"
    write_ome_tiff(src, xml=edit(ome_xml(1024, 768, plant=False)))
    return src


def test_ome_attributes_ids_and_original_metadata(tmp_path):
    n = NAME
    src = _ome(tmp_path, lambda x: (
        x.replace('Creator="wsideid fixtures"', f'Creator="{n}"')
        .replace('ome.xsd">', 'ome.xsd https://evil.example/Zebulon.xsd">')
        .replace('<Channel ID="Channel:0:0"', f'<Channel ID="Channel:0:0" Name="{n}" Fluor="{n}"')
        .replace('Manufacturer="Acme"', f'Manufacturer="{n}"')
        .replace('Model="Scope 9"', f'Model="{n}"')
        .replace('Model="Plan 20x"', f'Model="{n}"')
        .replace('"Image:0"', '"Image:Quackenbush"')
        .replace('"Instrument:0"', '"urn:lsid:zeb@example.org:Instrument:Quackenbush"')
        .replace('Pixels:0', 'Pixels:MRN-4711-0815')
        .replace('<ObjectiveSettings ID="Objective:0"/>',
                 '<ObjectiveSettings ID="Objective:0" Medium="Quackenbush"/>')
        .replace('</Instrument>', '<Quackenbush><Zebulon/></Quackenbush></Instrument>')
        .replace('<InstrumentRef ID="urn:lsid:zeb@example.org:Instrument:Quackenbush"/>',
                 f'<InstrumentRef ID="urn:lsid:zeb@example.org:Instrument:Quackenbush"/>{n}')
        .replace('</OME>', '<StructuredAnnotations><XMLAnnotation ID="Annotation:Quackenbush" '
                 'Namespace="openmicroscopy.org/OriginalMetadata"><Value>'
                 f'<OriginalMetadata><Key>ICC Profile</Key><Value>{n}</Value></OriginalMetadata>'
                 f'<OriginalMetadata><Key>;Name</Key><Value>{n}</Value></OriginalMetadata>'
                 f'<OriginalMetadata><Key>{n}</Key><Value>1</Value></OriginalMetadata>'
                 '<OriginalMetadata><Key>AppMag</Key><Value>20</Value></OriginalMetadata>'
                 '</Value></XMLAnnotation></StructuredAnnotations></OME>')))
    out, hits = deid_and_search(src, tmp_path)
    assert hits == {}
    [dst] = released(out)
    with tifffile.TiffFile(dst) as tf:
        xml = tf.pages[0].description
        assert tf.pages[0].shape == (768, 1024, 3)
    assert 'ID="Image:0"' in xml and 'InstrumentRef ID="Instrument:' in xml
    assert "<Key>AppMag</Key>" in xml


def test_ome_namespace_variant_is_refused_without_quoting_it(tmp_path):
    src = _ome(tmp_path, lambda x: x.replace('http://www.openmicroscopy.org/Schemas/OME/2016-06"',
                                             'http://www.openmicroscopy.org/Schemas/OME/Quackenbush"', 1))
    _, hits = deid_and_search(src, tmp_path, check=2)
    assert hits == {}


def test_ome_schema_messages_name_places_never_values():
    from lxml import etree

    from fixtures.ometiff import ome_xml
    from wsideid.adapters.ome_schema import schema_errors

    bad = ome_xml(64, 64, plant=False).replace(
        '<ObjectiveSettings ID="Objective:0"/>', '<ObjectiveSettings ID="Objective:0" Medium="Quackenbush"/>'
    ).replace("</Instrument>", "<Zebulon/></Instrument>")
    errors = schema_errors(bad)
    assert errors and all("Quackenbush" not in e and "Zebulon" not in e for e in errors)
    assert any("/OME/Image/ObjectiveSettings, attribute Medium" in e for e in errors)
    assert etree  # lxml present


def _dicom(tmp_path: Path, edit, rel: str = "dicom/highdicom-sm/sm_image.dcm") -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    # the values planted are invalid on purpose (a library imported elsewhere in the suite
    # may have made pydicom raise on those)
    with pydicom.config.disable_value_validation():
        ds = pydicom.dcmread(shared_slide(rel))
        edit(ds)
        ds.save_as(folder / "x.dcm", enforce_file_format=True)
    return folder


def test_dicom_codes_equipment_and_code_strings(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def edit(ds):
        item = ds.SpecimenDescriptionSequence[0]
        item.PrimaryAnatomicStructureSequence[0].CodeMeaning = NAME
        ds.ContainerTypeCodeSequence[0].CodeValue = "ZQ4711-0815"
        ds.ContainerTypeCodeSequence[0].CodingSchemeVersion = NAME
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "4711", "99ZQ", NAME
        ds.AnatomicRegionSequence = Sequence([code])
        ds.Manufacturer = NAME
        ds.ManufacturerModelName = MRN
        ds.SoftwareVersions = ["1.0", f"{NAME} 1985-04-12"]
        ds.PositionReferenceIndicator = NAME
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "ZEBULON"]
        path = Dataset()
        path.OpticalPathIdentifier = "Zebulon"
        path.ICCProfile = _planted_profile()
        path.IlluminationTypeCodeSequence = Sequence([Dataset()])
        illumination = path.IlluminationTypeCodeSequence[0]
        illumination.CodeValue, illumination.CodingSchemeDesignator = "111744", "DCM"
        illumination.CodeMeaning = "Brightfield illumination"
        ds.OpticalPathSequence = Sequence([path])
        ds.NumberOfOpticalPaths = 1

    folder = _dicom(tmp_path, edit)
    out, hits = deid_and_search(folder, tmp_path, needles=NEEDLES + ["ZQ4711"])
    assert hits == {}
    [series] = released(out)
    ds = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    assert ds.Manufacturer == "UNKNOWN" and ds.SoftwareVersions == "1.0"
    assert ds.OpticalPathSequence[0].ICCProfile[36:40] == b"acsp"
    assert ds.OpticalPathSequence[0].IlluminationTypeCodeSequence[0].CodeMeaning == \
        "Brightfield illumination"


def test_dicom_code_strings_without_defined_terms_keep_no_value(tmp_path):
    """Sixteen capitals and digits hold a surname or a record number: a code string is kept
    only from its element's defined terms (Laterality R or L), any other emptied."""
    def edit(ds):
        ds.add_new(0x00180015, "CS", "ZEBULON 47110815")   # BodyPartExamined
        ds.add_new(0x00185101, "CS", "QUACKENBUSH")        # ViewPosition
        ds.add_new(0x00200060, "CS", "MRN4711")            # Laterality
        ds.add_new(0x00200062, "CS", "L")                  # ImageLaterality

    folder = _dicom(tmp_path, edit)
    out, hits = deid_and_search(folder, tmp_path, needles=NEEDLES + ["47110815", "MRN4711"])
    assert hits == {}
    [series] = released(out)
    ds = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
    assert ds.get("ImageLaterality") == "L"
    assert not ds.get("BodyPartExamined") and not ds.get("ViewPosition") and not ds.get("Laterality")


def test_dicom_malformed_icc_profile_refuses_the_slide(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def edit(ds):
        path = Dataset()
        path.OpticalPathIdentifier = "1"
        path.ICCProfile = b"\0" * 64 + NAME.encode() + b"\0" * 13
        ds.OpticalPathSequence = Sequence([path])

    folder = _dicom(tmp_path, edit)
    out, hits = deid_and_search(folder, tmp_path, check=2)
    assert hits == {}
    assert released(out) == [] if out.exists() else True


def test_dicom_library_warnings_and_retained_uids_quote_nothing(tmp_path):
    """A UID holding letters: pydicom warns with the value (withheld from stderr), and even
    under --retain-uids it is no UID to keep."""
    def edit(ds):
        ds.FrameOfReferenceUID = "1.2.826.0.1.Zebulon.Quackenbush.4711"

    folder = _dicom(tmp_path, edit, "dicom/openslide-boxes/boxes_0.dcm")
    out, hits = deid_and_search(folder, tmp_path, "--retain-uids")
    assert hits == {}
    assert "warning(s) from pydicom" in (out / "wsideid-report.json").read_text()


def test_report_keeps_no_made_up_names(tmp_path):
    """Unknown key names of every text format stay out of the report."""
    src = copy_of(tmp_path, "svs/CMU-1-Small-Region.svs")
    with tifffile.TiffFile(src) as tf:
        description = tf.pages[0].description
    set_text(src, 0, 270, description + f"|{NAME} = 1|CustomField{NAME} = 2|ZebulonQuackenbush")
    _, hits = deid_and_search(src, tmp_path)
    assert hits == {}


def test_dicom_institution_is_kept_only_under_its_option(tmp_path):
    """Retain Institution Identity keeps a name-shaped institution (the user asked for it);
    by default Table E.1-1 removes it; a value no name looks like is removed either way."""
    def edit(ds):
        ds.InstitutionName = "Example University Hospital"
        ds.InstitutionalDepartmentName = "Pathology; MRN 4711-0815\x00\x01"

    for options, kept in (((), False), (("--retain-institution",), True)):
        work = tmp_path / ("kept" if kept else "default")
        work.mkdir()
        folder = _dicom(work, edit)
        out, hits = deid_and_search(folder, work, *options, needles=["4711-0815"])
        assert hits == {}
        [series] = released(out)
        ds = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
        assert (ds.get("InstitutionName") == "Example University Hospital") is kept
        assert not ds.get("InstitutionalDepartmentName")
        assert b"Example University" not in b"".join(p.read_bytes() for p in series.iterdir()) \
            or kept
