"""Unit tests where the logic is intricate: codestream segments, dates, Aperio headers, TIFF engine, MIRAX containers."""
from __future__ import annotations

import struct

import imagecodecs
import numpy as np
import pytest
import tifffile

from wsideid.adapters.svs import clean_header, split_description
from wsideid.errors import SlideError
from wsideid.images import codestreams, j2k, png, segments
from wsideid.dates import transform_date
from wsideid.keyring import Keyring
from wsideid.containers.tiff.reader import TiffFile
from wsideid.containers.files import DirectWrites
from wsideid.containers.tiff.writer import IfdOut, ascii_value, write_tiff


def _jpeg() -> bytes:
    return imagecodecs.jpeg8_encode(np.full((16, 16, 3), 90, np.uint8), level=80)


def _with_segment(stream: bytes, marker: int, payload: bytes) -> bytes:
    return stream[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + stream[2:]


def test_clean_jpeg_removes_com_and_app_but_keeps_jfif():
    base = _jpeg()
    dirty = _with_segment(_with_segment(base, 0xFE, b"patient Jane"), 0xE1, b"Exif\x00\x00secret")
    cleaned, removed = segments.clean_jpeg(dirty)
    assert cleaned == base
    assert [m for m, _ in removed] == ["APP1", "COM"]
    assert b"JFIF" in cleaned  # APP0 JFIF kept
    assert np.array_equal(imagecodecs.jpeg8_decode(cleaned), imagecodecs.jpeg8_decode(base))


def test_clean_jpeg_trailing_bytes_after_eoi():
    base = _jpeg()
    cleaned, removed = segments.clean_jpeg(base + b"ACCESSION-1234")
    assert cleaned == base and removed[0][0] == "trailing data"
    assert segments.clean_jpeg(base + b"\x00\x00")[1] == []  # zero padding is harmless


def test_screen_flags_exactly_the_dirty_streams():
    base = _jpeg()
    streams = [base, _with_segment(base, 0xFE, b"x" * 10), base, base + b"tail", b"not a jpeg at all"]
    buf = np.frombuffer(b"".join(streams), np.uint8)
    offs = np.cumsum([0] + [len(s) for s in streams[:-1]]).astype(np.int64)
    cnts = np.array([len(s) for s in streams], np.int64)
    assert segments.screen_jpeg(buf, offs, cnts).tolist() == [False, True, False, True, True]


def _big_jpeg() -> bytes:
    """A JPEG of a few hundred KB (an NDPI level's single JPEG, small): noise, so that its
    entropy-coded data holds many stuffed FF bytes."""
    rng = np.random.default_rng(7)
    return imagecodecs.jpeg8_encode(rng.integers(0, 255, (256, 512, 3), np.uint8), level=95)


@pytest.mark.parametrize("case", ["clean", "header-com", "marker-in-data", "marker-at-window",
                                  "no-eoi", "padded", "tail-text", "small-beside"])
def test_screen_of_a_run_larger_than_a_window(tmp_path, monkeypatch, case):
    """A run larger than a window is screened through pread windows (no memory map: a file
    that shrinks would kill the process with SIGBUS): the same flags as the whole-buffer
    screen, also for a marker just before a window's end."""
    base = _big_jpeg()
    monkeypatch.setattr(segments, "WINDOW", 16384)
    stream, offs = base, [0]
    start = segments.scan_start(base)
    if case == "header-com":
        stream = _with_segment(base, 0xFE, b"Jane Doe")
    elif case == "marker-in-data":
        stream = base[:start + 50000] + b"\xff\xfe" + base[start + 50000:]
    elif case == "marker-at-window":   # the FF ends a window, its marker byte opens the next
        at = 3 * 16384 - 1        # windows start where the entropy-coded data does
        stream = base[:start + at] + b"\xff\xe1" + base[start + at:]
    elif case == "no-eoi":
        stream = base[:-2]
    elif case == "padded":
        stream = base + b"\x00"
    elif case == "tail-text":
        stream = base + b"ACC-1"
    data = stream + (base[:3000] if case == "small-beside" else b"")
    cnts = [len(stream)] + ([3000] if case == "small-beside" else [])
    offs += [len(stream)] if case == "small-beside" else []
    path = tmp_path / "runs.bin"
    path.write_bytes(data)
    offs_a, cnts_a = np.array(offs, np.int64), np.array(cnts, np.int64)
    whole = segments.screen_jpeg(np.frombuffer(data, np.uint8), offs_a, cnts_a).tolist()
    with open(path, "rb") as fh:
        windowed = segments.screen_runs(fh.fileno(), len(data), offs_a, cnts_a,
                                        segments.screen_jpeg).tolist()
    assert windowed == whole
    expected = {"clean": False, "padded": False, "small-beside": False}.get(case, True)
    assert windowed[0] is expected
    if case == "small-beside":
        assert windowed[1] is True      # a JPEG cut short


def test_screen_of_a_large_run_in_a_shrunk_file_is_an_input_error(tmp_path, monkeypatch):
    base = _big_jpeg()
    monkeypatch.setattr(segments, "WINDOW", 16384)
    path = tmp_path / "cut.bin"
    path.write_bytes(base[: len(base) // 2])      # the file shrank after it was planned
    with open(path, "rb") as fh, pytest.raises(SlideError, match="ends before"):
        segments.screen_runs(fh.fileno(), len(base), np.array([0]), np.array([len(base)]),
                             segments.screen_jpeg)


def test_clean_j2k_removes_comment_and_fixes_psot():
    base = imagecodecs.jpeg2k_encode(np.full((32, 32, 3), 50, np.uint8), level=30, codecformat="J2K")
    siz_len = struct.unpack(">H", base[4:6])[0]
    at = 4 + siz_len
    com = b"\xff\x64" + struct.pack(">H", 4 + 9) + b"\x00\x01" + b"Dr. Smith"
    dirty = base[:at] + com + base[at:]
    cleaned, removed = j2k.clean_j2k(dirty)
    assert cleaned == base and removed == [("COM", b"Dr. Smith")]
    buf = np.frombuffer(dirty + base, np.uint8)
    flags = j2k.screen_j2k(buf, np.array([0, len(dirty)]), np.array([len(dirty), len(base)]))
    assert flags.tolist() == [True, False]


def test_kakadu_statistics_comment_is_kept_but_lookalikes_are_not():
    kdu = (b"Kdu-Layer-Info: log_2{Delta-D(MSE)/[2^16*Delta-L(bytes)]}, L(bytes)\n"
           b" -62.3, 1.4e+004\n")
    assert any(p.fullmatch(kdu) for p in j2k.SAFE_COMMENTS)
    assert not any(p.fullmatch(kdu + b"Jane Doe") for p in j2k.SAFE_COMMENTS)


@pytest.mark.parametrize("value,mode,days,expected", [
    ("12/29/09", "shift", 10, "12/19/09"),
    ("12/29/2009", "shift", 365, "12/29/2008"),
    ("2021-03-14", "keep-year", 0, "2021-01-01"),
    ("2021:03:14 13:37:42", "keep-year", 0, "2021:01:01 00:00:00"),
    ("2021:03:14 13:37:42", "shift", 1, "2021:03:13 13:37:42"),
    ("not a date", "shift", 1, None),
    ("12/29/09", "remove", 0, None),
])
def test_transform_date(value, mode, days, expected):
    assert transform_date(value, mode, days) == expected


def test_keyring_is_stable_per_key():
    a, b = Keyring(b"k" * 32), Keyring(b"j" * 32)
    assert a.slide_pseudonym(b"x") == Keyring(b"k" * 32).slide_pseudonym(b"x")
    assert a.slide_pseudonym(b"x") != b.slide_pseudonym(b"x")
    assert 1 <= a.date_shift_days() <= 3650


def test_aperio_header_keeps_geometry_drops_other_words():
    header = ("Aperio Image Library v11.2.1 Jane\r\n46000x32914 [42673,5576 2220x2967] (240x240) "
              "JPEG/RGB Q=30;Aperio Image Library v10.0.51\r\n46920x33014 [0,100 46000x32914] "
              "(256x256) JPEG/RGB Q=30")
    cleaned, dropped = clean_header(header)
    assert dropped == ["Jane"]
    assert cleaned == header.replace(" v11.2.1 Jane", " v11.2.1")
    untouched = "Aperio Image Library v11.2.1 \nlabel 387x463"
    assert clean_header(untouched) == (untouched, [])


def test_split_description_keeps_order_and_fragments():
    header, pairs = split_description("Aperio X\r\n1x1|A = 1|B=two words|junk|C = ")
    assert header == "Aperio X\r\n1x1"
    assert pairs == [("A", "1"), ("B", "two words"), ("junk", None), ("C", "")]


def _three_page_tiff(path, bigtiff=False, byteorder="<"):
    with tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder=byteorder) as tw:
        for i in range(3):
            tw.write(np.full((64, 64), i, np.uint8), tile=(16, 16), metadata=None,
                     description=f"page {i} SECRET-{i}-XYZ", software=False)
    return path


@pytest.mark.parametrize("bigtiff,byteorder", [(False, "<"), (True, "<"), (False, ">"), (True, ">")])
def test_writer_drops_ifd_and_leaves_no_residue(tmp_path, bigtiff, byteorder):
    path = _three_page_tiff(tmp_path / "t.tif", bigtiff, byteorder)
    tiles = [tifffile.imread(path, key=i) for i in range(3)]
    src = TiffFile(path)
    out = tmp_path / "o.tif"
    out.write_bytes(path.read_bytes())
    chain = []
    for i in (0, 2):  # drop the middle page
        ifd = src.ifds[i]
        tags = {code: tag for code, tag in ifd.tags.items()}
        tags[270] = ascii_value(f"page {i} is clean, and this description is longer than before")
        chain.append(IfdOut(ifd, tags))
    fd = __import__("os").open(out, __import__("os").O_RDWR)
    try:
        write_tiff(src, DirectWrites(fd), chain)
    finally:
        __import__("os").close(fd)
    data = out.read_bytes()
    for i in range(3):
        assert f"SECRET-{i}-XYZ".encode() not in data
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == 2
        assert np.array_equal(tf.pages[0].asarray(), tiles[0])
        assert np.array_equal(tf.pages[1].asarray(), tiles[2])
        assert tf.pages[1].description.startswith("page 2 is clean")
    # the dropped page's pixels (value 1 everywhere) are gone: no 16x16 run of 0x01 remains
    assert b"\x01" * 256 not in data


def test_reader_rejects_absurd_counts(tmp_path):
    path = _three_page_tiff(tmp_path / "t.tif")
    with tifffile.TiffFile(path) as tf:
        entry = tf.pages[0].tags["ImageDescription"].offset
    raw = bytearray(path.read_bytes())
    raw[entry + 4:entry + 8] = struct.pack("<I", 0x7FFFFFFF)
    path.write_bytes(bytes(raw))
    with pytest.raises(SlideError, match="absurd count"):
        TiffFile(path)


# -- MIRAX containers ------------------------------------------------------------------------

def test_slidedat_reads_like_gkeyfile_and_writes_bom_crlf():
    from wsideid.errors import SlideError
    from wsideid.containers.mirax.slidedat import Slidedat

    text = ("\ufeff[GENERAL]\r\n# a comment\r\n  SLIDE_ID =  abc \r\nEMPTY=\r\n\r\n[LEVEL]\nA=1\n"
            "[GENERAL]\r\nLATER = x=y\r\nLONG = " + "z" * 300 + "\r\n")
    ini = Slidedat.parse(text.encode("utf-8"))
    assert ini.sections == {"GENERAL": {"SLIDE_ID": "abc", "EMPTY": "", "LATER": "x=y", "LONG": "z" * 300},
                            "LEVEL": {"A": "1"}}
    out = ini.to_bytes()
    assert out.startswith(b"\xef\xbb\xbf") and b"\n" not in out.replace(b"\r\n", b"")
    assert Slidedat.parse(out).sections == ini.sections
    assert not Slidedat.parse(b"[G]\nA=1\n").to_bytes().startswith(b"\xef\xbb\xbf")
    for bad, why in ((b"A=1\n", "line 1"), (b"[G]\njust text\n", "line 2"),
                     (b"[G]\nA=\xff\xfe\n", "not UTF-8"), (b"[G]\n" + b"A=1\n" * 300000, "larger")):
        with pytest.raises(SlideError, match=why):
            Slidedat.parse(bad)


def test_index_round_trip_multi_page_and_guards():
    import struct

    from wsideid.errors import SlideError
    from wsideid.containers.mirax.index import IndexFile, Record

    hier = [Record([[(0, 10, 5, 0), (1, 15, 5, 0)], [(2, 20, 5, 1)]]), None]
    nonhier = [Record([[(1253, 0, 40, 7, 0)]])]
    data = IndexFile("ID42", hier, nonhier).to_bytes()
    back = IndexFile.parse(data, "ID42", 2, 1)
    assert [r.pages if r else None for r in back.hier] == [[list(p) for p in hier[0].pages], None]
    assert back.nonhier[0].pages == [[(1253, 0, 40, 7, 0)]]
    # OpenSlide reads a record's pages one after another: the second page follows the first
    head = struct.unpack_from("<i", data, struct.unpack_from("<i", data, 9)[0])[0]
    first = struct.unpack_from("<i", data, head + 4)[0]
    assert struct.unpack_from("<i", data, first + 4)[0] == first + 8 + 2 * 16
    with pytest.raises(SlideError, match="SLIDE_ID"):
        IndexFile.parse(data, "ID43", 2, 1)
    looped = bytearray(data)
    struct.pack_into("<i", looped, first + 8 + 2 * 16 + 4, first)   # last page points back
    # a broken record is reported for the caller to decide (OpenSlide fails only for those it needs)
    assert "loop" in IndexFile.parse(bytes(looped), "ID42", 2, 1).errors[("hier", 0)]
    assert "past" in IndexFile.parse(data[:len(data) - 30], "ID42", 2, 1).errors[("nonhier", 0)]
    with pytest.raises(SlideError, match="past its end"):   # the tables themselves must be there
        IndexFile.parse(data[:12], "ID42", 2, 1)


def test_clean_png_keeps_pixels_and_rendering_chunks_only():
    import io

    from PIL import Image as PilImage
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "Dr PNG-QUACK")
    info.add_itxt("Description", "PATIENT-ITXT-QUACK")
    buf = io.BytesIO()
    img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    PilImage.fromarray(img).save(buf, format="PNG", pnginfo=info, dpi=(300, 300))
    data = buf.getvalue() + b"TRAILING-QUACK"
    cleaned, removed = codestreams.clean_image(data)
    assert sorted(kind for kind, _ in removed) == ["iTXt", "tEXt", "trailing data"]
    assert b"QUACK" not in cleaned and b"pHYs" in cleaned
    assert np.array_equal(np.asarray(PilImage.open(io.BytesIO(cleaned))), img)
    with pytest.raises(segments.MalformedStream):
        png.clean_png(data[:40])


def test_report_messages_do_not_quote_the_input_name():
    from pathlib import Path

    from wsideid.report.audit import without_source

    src = Path("/data/incoming/DOE-JOHN-S26.svs")
    message = "wsidicomizer could not convert the slide: cannot open /data/incoming/DOE-JOHN-S26.svs (DOE-JOHN-S26)"
    cleaned = without_source(message, src)
    assert "DOE-JOHN" not in cleaned and "incoming" not in cleaned and "<input>" in cleaned


# -- decide(): one decision for every field ---------------------------------------------------

def test_decide_keeps_only_values_of_the_declared_type():
    from wsideid.catalog import Entry
    from wsideid.policy import Policy, decide

    number = Entry("AppMag", "keep", "objective", "number")
    assert decide(number, "40", Policy(), name="x:AppMag", where="w").action == "keep"
    bad = decide(number, "40 Dr. Who", Policy(), name="x:AppMag", where="w")
    assert (bad.action, bad.why, bad.known) == ("remove", "value is not a number", True)
    numbers = Entry("roi", "keep", "", "numbers")
    assert decide(numbers, "68,279,1256,685", Policy(), name="n", where="w").action == "keep"
    assert decide(numbers, "68,279 DOE", Policy(), name="n", where="w").why == "value is not numeric"
    assert decide(Entry("t", "keep", "", "text"), "a\x00b", Policy(), name="n", where="w").action == "remove"


def test_decide_dates_follow_the_policy_and_times_are_kept_only_when_shifting():
    from wsideid.catalog import UNKNOWN, Entry
    from wsideid.dates import DAY_FIRST
    from wsideid.policy import Policy, decide

    date = Entry("Date", "date", "scan date", "date")
    assert decide(date, "12/29/09", Policy(), name="d", where="w").action == "remove"
    shifted = decide(date, "12/29/09", Policy(dates="shift", date_shift_days=10), name="d", where="w")
    assert (shifted.action, shifted.new_value) == ("date", "12/19/09")
    year = decide(date, "2021-03-14", Policy(dates="keep-year"), name="d", where="w")
    assert year.new_value == "2021-01-01"
    assert decide(date, "not a date", Policy(dates="shift"), name="d", where="w").why == "scan date (not a date)"
    day_first = decide(date, "14/03/2021 13:37:42", Policy(dates="shift", date_shift_days=1),
                       name="d", where="w", date_format=DAY_FIRST)
    assert day_first.new_value == "13/03/2021 13:37:42"
    time = Entry("Time", "date", "scan time", "time")
    assert decide(time, "13:37:42", Policy(dates="shift"), name="t", where="w").action == "keep"
    assert decide(time, "13:37:42", Policy(dates="keep-year"), name="t", where="w").action == "remove"
    assert decide(time, "DOE 13:37", Policy(dates="shift"), name="t", where="w").action == "remove"
    unknown = decide(UNKNOWN, "Jane Roe", Policy(dates="shift"), name="x:Who", where="w")
    assert (unknown.action, unknown.known) == ("remove", False)


def test_decide_device_identity_and_fragments():
    from wsideid.catalog import Entry
    from wsideid.policy import Policy, decide

    serial = Entry("ScanScope ID", "device", "scanner serial", "serial")
    assert decide(serial, "SS1234", Policy(), name="s", where="w").action == "remove"
    assert decide(serial, "SS1234", Policy(keep_device_id=True), name="s", where="w").action == "keep"
    # kept with --keep-device-id only in a serial's shape; free text never
    assert decide(serial, "Jane Roe", Policy(keep_device_id=True), name="s", where="w").action == "remove"
    untyped = Entry("Notes", "keep", "no type")
    assert decide(untyped, "anything", Policy(), name="n", where="w").action == "remove"
    fragment = decide(Entry("AppMag", "keep", "", "number"), None, Policy(), name="a:DOE JANE", where="w")
    assert (fragment.action, fragment.value, fragment.known) == ("remove", "DOE JANE", False)
    marker = decide(Entry(";NDP Shading Data", "keep", "heading", "marker"), None, Policy(),
                    name="ndpi:;NDP Shading Data", where="w")
    assert marker.action == "keep"


def test_registry_detects_by_content_in_order(tmp_path):
    import numpy as np

    from wsideid import adapters

    names = [a.name for a in adapters.adapters()]
    assert names[0] == "dicom-wsi" and names[-1] == "generic-tiff"
    assert names.index("hamamatsu-ndpi") < names.index("ome-tiff") < names.index("aperio-svs")
    plain = tmp_path / "named-like.svs"
    tifffile.imwrite(plain, np.zeros((8, 8), np.uint8), software=False)
    assert adapters.detect(plain).name == "generic-tiff"      # the name says svs; content rules
    aperio = tmp_path / "x.tif"
    tifffile.imwrite(aperio, np.zeros((8, 8), np.uint8), software=False,
                     description="Aperio Image Library v12\r\n8x8 [0,0 8x8] (8x8) JPEG/RGB Q=70|AppMag = 20")
    assert adapters.detect(aperio).name == "aperio-svs"
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    assert adapters.detect(text) is None


def test_keyring_derivations_are_stable():
    """Released data sets are linked across runs by these: a change of formula would give
    every slide of a later run new pseudonyms and UIDs."""
    ring = Keyring(b"k" * 32)
    assert ring.slide_pseudonym(b"fp") == ring.slide_pseudonym(b"fp") != ring.slide_pseudonym(b"fq")
    assert ring.slide_pseudonym(b"fp").startswith("wsi-") and len(ring.slide_pseudonym(b"fp")) == 20
    assert ring.uid("1.2.3") == ring.uid("1.2.3") and ring.uid("1.2.3").startswith("2.25.")
    assert ring.identifier("patient", "P1") == ring.identifier("patient", "P1") != ring.identifier("accession", "P1")
    assert ring.slide_identifier(b"fp", "ABCDEF12") == ring.slide_identifier(b"fp", "ABCDEF12").upper()
    assert len(ring.slide_identifier(b"fp", "ABCDEF12")) == 8
    first = ring.uid_sequence(b"fp")
    second = ring.uid_sequence(b"fp")
    assert [next(first) for _ in range(3)] == [next(second) for _ in range(3)]
    assert 1 <= ring.date_shift_days() <= 3650 and ring.date_shift_days() == Keyring(b"k" * 32).date_shift_days()
    assert Keyring(b"j" * 32).slide_pseudonym(b"fp") != ring.slide_pseudonym(b"fp")


def test_staging_appears_whole_or_not_at_all(tmp_path):
    import os

    from wsideid.containers.files import Staging

    stage = Staging(tmp_path, "wsi-x.svs")
    fd = stage.open_file()
    os.write(fd, b"data")
    os.close(fd)
    assert [p.name for p in tmp_path.iterdir()] == [stage.path.name]
    assert stage.path.name.startswith(".") and stage.path.name.endswith(".partial")
    assert stage.release() == tmp_path / "wsi-x.svs"
    assert [p.name for p in tmp_path.iterdir()] == ["wsi-x.svs"]
    folder = Staging(tmp_path, "wsi-y", kind="folder")
    (folder.path / "wsi-y").mkdir()
    (folder.path / "wsi-y.mrxs").write_bytes(b"")
    (tmp_path / "wsi-y.mrxs").write_bytes(b"old")    # an earlier run's output is replaced
    folder.release([("wsi-y", "wsi-y"), ("wsi-y.mrxs", "wsi-y.mrxs")])
    assert (tmp_path / "wsi-y.mrxs").read_bytes() == b"" and (tmp_path / "wsi-y").is_dir()
    gone = Staging(tmp_path, "wsi-z", kind="folder")
    gone.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wsi-x.svs", "wsi-y", "wsi-y.mrxs"]


# -- JPEG segments wherever they sit ----------------------------------------------------------

def _jfif(thumb: bytes = b"") -> bytes:
    xy = bytes([1, 1]) if thumb else b"\x00\x00"
    payload = b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01" + xy + thumb
    return bytes([0xFF, 0xE0]) + struct.pack(">H", len(payload) + 2) + payload


def _after_scan(stream: bytes, segment: bytes) -> bytes:
    """A segment between the entropy-coded data and EOI."""
    assert stream.endswith(b"\xff\xd9")
    return stream[:-2] + segment + b"\xff\xd9"


def _com(text: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text


@pytest.mark.parametrize("dirty,name", [
    (lambda s: _after_scan(s, _com(b"PATIENT DOE JANE")), "COM"),
    (lambda s: _after_scan(s, b"\xff\xe5" + struct.pack(">H", 12) + b"ACC-12345\x00"), "APP5"),
    (lambda s: s[:2] + _jfif(thumb=b"DOE") + s[2:], "APP0"),   # a JFIF thumbnail of 1x1 px
    (lambda s: s[:2] + b"\xff\xe0" + struct.pack(">H", 11) + b"JFXX\x00\x13DOE" + s[2:], "APP0"),
    (lambda s: s[:2] + b"\xff\xee" + struct.pack(">H", 19) + b"Adobe\x00\x64\x00\x00\x00\x00\x01DOE!X" + s[2:], "APP14"),
])
def test_jpeg_text_segments_are_found_and_removed_wherever_they_sit(dirty, name):
    base = _jpeg()
    stream = dirty(base)
    cleaned, removed = segments.clean_jpeg(stream)
    assert [m for m, _ in removed] == [name]
    assert b"DOE" not in cleaned and b"ACC-" not in cleaned
    assert np.array_equal(imagecodecs.jpeg8_decode(cleaned), imagecodecs.jpeg8_decode(base))
    buf = np.frombuffer(base + stream + base, np.uint8)
    offs = np.array([0, len(base), len(base) + len(stream)])
    cnts = np.array([len(base), len(stream), len(base)])
    assert segments.screen_jpeg(buf, offs, cnts).tolist() == [False, True, False]


def test_exact_jfif_and_adobe_segments_stay_and_restart_markers_are_not_segments():
    base = _jpeg()
    assert base[2:4] == b"\xff\xe0" and segments.clean_jpeg(base) == (base, [])   # libjpeg's JFIF
    adobe = base[:2] + b"\xff\xee" + struct.pack(">H", 14) + b"Adobe\x00\x64\x00\x00\x00\x00\x01" + base[2:]
    assert segments.clean_jpeg(adobe)[1] == []
    import io

    from PIL import Image as PILImage

    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)
    encoded = io.BytesIO()
    PILImage.fromarray(noise).save(encoded, "JPEG", quality=90, restart_marker_rows=1)
    restarts = encoded.getvalue()
    assert b"\xff\xd0" in restarts[segments.scan_start(restarts):]
    assert segments.clean_jpeg(restarts) == (restarts, [])
    buf = np.frombuffer(adobe + restarts, np.uint8)
    flags = segments.screen_jpeg(buf, np.array([0, len(adobe)]), np.array([len(adobe), len(restarts)]))
    assert flags.tolist() == [False, False]


def test_removing_a_header_segment_reports_how_far_the_scan_data_moved():
    from wsideid.images import codestreams

    base = _jpeg()
    dirty = _with_segment(base, 0xFE, b"x" * 30)
    tail = _after_scan(base, _com(b"y" * 50))
    data = dirty + tail
    import os
    import tempfile
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        found = codestreams.clean_runs(fh.fileno(), len(data), np.array([0, len(dirty)]),
                                       np.array([len(dirty), len(tail)]), "jpeg")
    assert [(f.index, f.header_shift) for f in found] == [(0, 34), (1, 0)]


def test_first_difference_finds_the_piece_that_differs(tmp_path):
    """Kept pieces are compared in large blocks: the first differing piece is still named,
    whether pieces are back to back, apart, moved, or cut short by the end of a file."""
    import random

    from wsideid.verify.compare import BLOCK, first_difference

    rng = random.Random(7)
    data = bytes(rng.getrandbits(8) for _ in range(1 << 16)) * (3 * BLOCK // (1 << 16))
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(data)
    pieces, pos = [], 0
    while pos < len(data) - 100_000:
        size = rng.randrange(1, 300_000)
        pieces.append((len(pieces), pos, pos, min(size, len(data) - pos)))
        pos += size + (rng.randrange(0, 50) if rng.random() < 0.3 else 0)
    with open(a, "rb") as fa:
        b.write_bytes(data)
        with open(b, "rb") as fb:
            assert first_difference(fa.fileno(), fb.fileno(), pieces) is None
        for victim in (0, len(pieces) // 2, len(pieces) - 1):
            _, start, _, size = pieces[victim]
            changed = bytearray(data)
            changed[start + size - 1] ^= 0xFF       # the last byte of the piece
            b.write_bytes(bytes(changed))
            with open(b, "rb") as fb:
                assert first_difference(fa.fileno(), fb.fileno(), pieces) == victim
        b.write_bytes(data[:pieces[-1][1] + 10])   # the output cut short inside the last piece
        with open(b, "rb") as fb:
            assert first_difference(fa.fileno(), fb.fileno(), pieces) == len(pieces) - 1
        moved = data[:1000] + b"\0" * 7 + data[1000:]   # one piece moved by 7 bytes
        b.write_bytes(moved)
        with open(b, "rb") as fb:
            assert first_difference(fa.fileno(), fb.fileno(), [(0, 1000, 1007, 5000)]) is None
            assert first_difference(fa.fileno(), fb.fileno(), [(0, 1000, 1000, 5000)]) == 0
    b.write_bytes(data[:5000])       # both files end inside the piece, at the same place
    with open(b, "rb") as fa, open(b, "rb") as fb:
        assert first_difference(fa.fileno(), fb.fileno(), [(0, 0, 0, 4000), (1, 4000, 4000, 2000)]) == 1



def test_planned_zeroing_skips_the_holes_of_a_sparse_file(tmp_path):
    """In place, the gaps to zero are saved in the undo record first: a hole of a sparse file
    (an NDPI's 4 GB of nothing) already reads as zeros and must be neither saved nor zeroed."""
    import os

    import numpy as np

    from wsideid.containers.files import PlannedWrites, data_segments

    path = tmp_path / "sparse.bin"
    with open(path, "wb") as fh:
        fh.write(b"A" * 4096)
        fh.seek(1 << 30)            # a 1 GiB hole
        fh.write(b"B" * 4096)
    fd = os.open(path, os.O_RDWR)
    try:
        segments = data_segments(fd, 0, (1 << 30) + 4096)
        assert segments[0][0] == 0 and segments[-1][1] == (1 << 30) + 4096
        assert sum(b - a for a, b in segments) < 1 << 20
        planned = PlannedWrites(fd)
        # kept: the first 100 bytes and the last 96; the gap between them spans the hole
        end = (1 << 30) + 4096
        planned.zero_gaps(np.array([0, end - 96]), np.array([100, end]))
        assert sum(b - a for a, b in planned.ranges()) < 1 << 20
        planned.apply()
        with open(path, "rb") as fh:
            assert fh.read(100) == b"A" * 100 and fh.read(3996) == bytes(3996)
            fh.seek(1 << 30)
            assert fh.read() == bytes(4000) + b"B" * 96
    finally:
        os.close(fd)


def test_residue_search_reads_ranges_a_chunk_at_a_time(tmp_path, monkeypatch):
    """The residue search reads the non-image bytes of a file in overlapping chunks (a dense
    file with GBs of cleared gaps was read into one buffer: 6.3 GB of memory); a needle across
    a chunk boundary is still found, one in a range not searched is not."""
    import os

    from wsideid import needles

    monkeypatch.setattr(needles, "CHUNK", 4096)
    path = tmp_path / "f.bin"
    data = bytearray(64 * 1024)
    data[4096 - 3:4096 + 5] = b"WILBURHA"        # across the first chunk boundary
    data[40000:40008] = b"ZEBULONQ"              # outside the ranges searched
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        found = needles.find_in_ranges(fd, [(0, 20000), (50000, 65536)],
                                       ["wilburha", "zebulonq"])
    finally:
        os.close(fd)
    assert found == ["wilburha"]


def test_report_is_written_without_a_name_until_it_is_whole(tmp_path):
    """While the report is written, nothing new is visible in its folder (O_TMPFILE): a kill
    at that moment leaves no hidden partial file beside a slide released in place."""
    from wsideid.report import audit

    seen = []

    def pieces():
        yield "{"
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        yield "}\n"

    audit._write_whole(tmp_path / "wsideid-report.json", pieces())
    assert seen == [[]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wsideid-report.json"]
    assert (tmp_path / "wsideid-report.json").read_text() == "{}\n"
