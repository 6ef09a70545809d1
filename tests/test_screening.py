"""No text hides inside kept image data: every byte of every kept tile, strip, frame and
record is accounted for by its codec's grammar, or the run is rewritten without it, or the
slide is refused (exit 2, one error line naming the image and the run).

End to end through the command line on copies of the real slides and on generated ones: text
is planted where a reader would skip it, every output byte is searched, and the pixels are
compared with the input's (OpenSlide, tifffile, imagecodecs) where a run was cut. The grammar
details are unit-tested against images/segments.py, j2k.py, png.py and lossless.py.
"""
from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pydicom
import pytest
import tifffile
from conftest import all_files, assert_rejected, found_needles, run, shared_slide
from PIL import Image as PILImage
from tiffpatch import read_run, replace_run

from fixtures.images import pattern
from wsideid.images import codestreams, j2k, lossless, png, segments
from wsideid.images.segments import MalformedStream

TEXT = b"Zebulon Quackenbush MRN-4711-0815"
NEEDLES = ["Zebulon", "Quackenbush", "4711-0815"]
CMU = "svs/CMU-1-Small-Region.svs"
TCGA = "svs/tcga-cr-7395-01a-01-ts1.svs"
OME = "ometiff/OS-2-ndpi.ome.tif"
GCP = "dicom/gcp-jpeg2000-volume/multi_frame_jpeg2000_camelyon_challenge_image.dcm"
BOXES = "dicom/openslide-boxes/boxes_0.dcm"


def copy_of(tmp_path: Path, rel: str) -> Path:
    src = tmp_path / "in" / Path(rel).name
    src.parent.mkdir(exist_ok=True)
    shutil.copy(shared_slide(rel), src)
    return src


def deid(src: Path, *options: str) -> Path:
    """De-identify (exit 0 required); the output folder, searched for the planted text."""
    out = src.parent.parent / "out"
    run("deid", src, "-o", out, *options, check=0)
    assert found_needles(all_files(out), NEEDLES) == {}
    return out


def output_file(out: Path, suffix: str) -> Path:
    [found] = [p for p in out.rglob(f"*{suffix}")]
    return found


def region(path: Path, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as s:
        return np.asarray(s.read_region((x, y), level, (w, h)))


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


# ---- a. JPEG 2000: Psot = 0 runs to EOC, and nothing after EOC stays ---------------------------

def _psot_zero(stream: bytes) -> bytes:
    at = stream.find(b"\xff\x90")
    return stream[:at + 6] + b"\x00\x00\x00\x00" + stream[at + 10:]


def test_aperio_j2k_tile_with_psot_zero_loses_the_text_after_eoc(tmp_path):
    src = copy_of(tmp_path, TCGA)
    tile = read_run(src, 0, 53)
    replace_run(src, 0, 53, _psot_zero(tile) + TEXT)
    out = deid(src)
    dst = output_file(out, ".svs")
    assert read_run(dst, 0, 53) == _psot_zero(tile)
    x, y = (53 % 18) * 256, (53 // 18) * 256
    assert np.array_equal(region(dst, x, y, 256, 256), region(shared_slide(TCGA), x, y, 256, 256))


def _series(tmp_path: Path, rel: str, change) -> Path:
    """A copy of a real instance with its frames (and Basic Offset Table) as `change` makes
    them: change(ds, frames) -> (frames, bot)."""
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(shared_slide(rel))
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    frames, bot = change(ds, frames)
    items = b""
    for item in [bot] + frames:
        item += b"\x00" * (len(item) % 2)
        items += struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
    ds.PixelData = items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    ds["PixelData"].is_undefined_length = True
    folder = tmp_path / "in" / "series"
    folder.mkdir(parents=True)
    ds.save_as(folder / "x.dcm", enforce_file_format=True)
    return folder


def _out_frames(out: Path) -> list[bytes]:
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(output_file(out, ".dcm"))
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def test_dicom_j2k_frame_with_psot_zero_loses_the_text_after_eoc(tmp_path):
    original: list[bytes] = []

    def change(ds, frames):
        original.extend(frames)
        frames[3] = _psot_zero(frames[3]) + TEXT
        return frames, b""

    out = deid(_series(tmp_path, GCP, change))
    got = _out_frames(out)
    assert got[3].rstrip(b"\x00") == _psot_zero(original[3]).rstrip(b"\x00")
    assert np.array_equal(imagecodecs.jpeg2k_decode(got[3]), imagecodecs.jpeg2k_decode(original[3]))


def _tiled_j2k(plt: bool = True) -> bytes:
    img = PILImage.fromarray(pattern(64, 64, 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG2000", tile_size=(32, 32), no_jp2=True, plt=plt)   # OpenJPEG: 4 tiles
    return buf.getvalue()


def _tile_parts(stream: bytes) -> list[int]:
    at, found = stream.find(b"\xff\x90"), []
    while stream[at:at + 2] == b"\xff\x90":
        found.append(at)
        at += struct.unpack_from(">I", stream, at + 6)[0]
    return found


def test_j2k_tile_parts_are_walked_to_eoc():
    base = _tiled_j2k()
    assert len(_tile_parts(base)) == 4 and j2k.clean_j2k(base) == (base, [])
    parts = _tile_parts(base)
    # a comment in the third tile-part's header goes, and its Psot shrinks back
    com = _segment(0x64, b"\x00\x01" + TEXT)
    at = parts[2] + 12
    psot = struct.unpack_from(">I", base, parts[2] + 6)[0] + len(com)
    dirty = base[:parts[2] + 6] + struct.pack(">I", psot) + base[parts[2] + 10:at] + com + base[at:]
    assert j2k.clean_j2k(dirty) == (base, [("COM", TEXT)])
    # Psot = 0 on the last tile-part: it ends at EOC, whatever follows is cut
    last = _psot_zero(base[parts[3]:])
    zero = base[:parts[3]] + last
    assert j2k.clean_j2k(zero) == (zero, [])
    assert j2k.clean_j2k(zero + TEXT) == (zero, [("trailing data", TEXT)])
    # text between tile-parts or before EOC is nothing the syntax allows
    for bad in (base[:parts[1]] + TEXT + base[parts[1]:], base[:-2] + TEXT + base[-2:]):
        with pytest.raises(MalformedStream):
            j2k.clean_j2k(bad)
    # Psot = 0 without EOC
    with pytest.raises(MalformedStream):
        j2k.clean_j2k(zero[:-2])


def test_encoder_comments_are_kept_only_in_the_encoders_own_shape():
    """A Kakadu or OpenJPEG comment stays only with a version of the catalog's grammar and, for
    Kakadu's layer statistics, numbers printed as Kakadu prints them: a record number or a date
    shaped as a version, or put in as statistics, goes with the comment."""
    base = _tiled_j2k()
    part = _tile_parts(base)[2]

    def with_comment(text: bytes) -> bytes:
        com = _segment(0x64, b"\x00\x01" + text)
        psot = struct.unpack_from(">I", base, part + 6)[0] + len(com)
        return (base[:part + 6] + struct.pack(">I", psot) + base[part + 10:part + 12] + com
                + base[part + 12:])

    stats = b"Kdu-Layer-Info: log_2{Delta-D(MSE)/[2^16*Delta-L(bytes)]}, L(bytes)\n"
    for real in (b"Kakadu-v6.0", b"Kakadu-v7.10.2\x00", b"Created by OpenJPEG version 2.5.0",
                 stats + b"-256.0, 1.4e+004\n", stats + b" -54.5, 1.4e+004\n -50.1, 2.8e+004\n"):
        kept = with_comment(real)
        assert j2k.clean_j2k(kept) == (kept, [])
    for planted in (b"Kakadu-v4815162342.20190314", b"Kakadu-v2019.03.14",
                    b"Created by OpenJPEG version 4815162342", stats + b" 4815162342, 20190314\n",
                    stats + b"-54.5, 1.4e+004" + b"\n-1.0, 1.0e+001" * 65):
        assert j2k.clean_j2k(with_comment(planted)) == (base, [("COM", planted)])


def test_the_j2k_screen_passes_plain_tiles_only(tmp_path):
    with tifffile.TiffFile(shared_slide(TCGA)) as tf, open(shared_slide(TCGA), "rb") as fh:
        page = tf.pages[0]
        tiles = []
        for off, n in list(zip(page.dataoffsets, page.databytecounts))[:20]:
            fh.seek(off)
            tiles.append(fh.read(n))
    streams = tiles + [tiles[1] + b"\x00", _psot_zero(tiles[0]), _tiled_j2k(), tiles[1] + b"Z"]
    buf = np.frombuffer(b"".join(streams), np.uint8)
    offs = np.cumsum([0] + [len(s) for s in streams[:-1]]).astype(np.int64)
    flags = j2k.screen_j2k(buf, offs, np.array([len(s) for s in streams]))
    assert flags.tolist() == [False] * 21 + [True, True, True]


# ---- b. LZW, Deflate, PackBits, uncompressed: the stream's end and its decoded size ------------

def _generic_tiff(path: Path, compression: str | None) -> np.ndarray:
    img = pattern(512, 512, 3)
    img[:, ::7] = 40      # something LZW and PackBits can compress
    tifffile.imwrite(path, img, tile=(256, 256), compression=compression, photometric="rgb",
                     metadata=None, software=False)
    return img


@pytest.mark.parametrize("compression", ["lzw", "zlib", "packbits", None])
def test_text_after_a_lossless_tile_is_cut(tmp_path, compression):
    src = tmp_path / "in" / "slide.tif"
    src.parent.mkdir()
    img = _generic_tiff(src, compression)
    tile = read_run(src, 0, 1)
    replace_run(src, 0, 1, tile + TEXT)
    out = deid(src)
    dst = output_file(out, ".tif")
    assert read_run(dst, 0, 1) == tile
    assert np.array_equal(tifffile.imread(dst), img)


def test_a_lossless_tile_that_decodes_to_more_than_the_tile_refuses_the_slide(tmp_path):
    src = tmp_path / "in" / "slide.tif"
    src.parent.mkdir()
    _generic_tiff(src, "zlib")
    raw = zlib.decompress(read_run(src, 0, 1))
    replace_run(src, 0, 1, zlib.compress(raw + TEXT))   # libtiff reads the tile, not the rest
    assert_rejected(src, "IFD 0 run 1: image data outside its codec's grammar (Deflate data "
                         "decodes to 196641 bytes where the image needs 196608)")


def _libtiff_lzw(img: np.ndarray) -> tuple[bytes, int]:
    """The first strip LZW-coded by libtiff (Pillow's TIFF writer, with its own Clear codes)
    and the number of bytes it decodes to."""
    buf = io.BytesIO()
    PILImage.fromarray(img).save(buf, "TIFF", compression="tiff_lzw")
    with tifffile.TiffFile(io.BytesIO(buf.getvalue())) as tf:
        page = tf.pages[0]
        assert page.compression == 5
        off, n = page.dataoffsets[0], page.databytecounts[0]
        rows = min(page.rowsperstrip, img.shape[0])
    return buf.getvalue()[off:off + n], rows * img.shape[1] * img.shape[2]


@pytest.mark.parametrize("source", ["imagecodecs", "libtiff"])
def test_the_lzw_walk_finds_eoi_as_the_decoders_do(source):
    noisy = np.random.default_rng(5).integers(0, 256, (300, 400, 3), np.uint8)   # many Clears
    smooth = pattern(300, 400, 2)
    for img in (noisy, smooth):
        if source == "imagecodecs":
            stream, size = imagecodecs.lzw_encode(img.tobytes()), img.nbytes
        else:
            stream, size = _libtiff_lzw(img)
        assert (lossless.lzw_end(stream) + 7) // 8 == len(stream)
        assert lossless.clean_lzw(stream, (size, size)) == (stream, [])
        assert lossless.clean_lzw(stream + TEXT, (size, size)) == (stream, [("trailing data", TEXT)])
        assert lossless.clean_lzw(stream + b"\x00" * 8, (size, size)) == (stream + b"\x00" * 8, [])
        with pytest.raises(MalformedStream):
            lossless.clean_lzw(stream, (size - 3, size - 3))


def _lzw(data: bytes, segment_codes: list[int]) -> tuple[bytes, int]:
    """TIFF LZW written here, with a Clear after as many codes as `segment_codes` says for each
    segment (encoders clear when the table is full; this one also earlier), and its length in
    bits. The code widths are the decoder's (9 bits while it holds fewer than 511 entries ...);
    imagecodecs decoding the result checks them independently."""
    bits: list[tuple[int, int]] = []
    plan = iter(segment_codes)

    def width(k: int) -> int:
        entries = 258 + max(k - 1, 0)
        return 9 if entries < 511 else 10 if entries < 1023 else 11 if entries < 2047 else 12

    table: dict[bytes, int] = {}
    k, limit, word = 0, next(plan, 3838), data[:1]
    bits.append((256, 9))
    for byte in data[1:]:
        grown = word + bytes([byte])
        if grown in table:
            word = grown
            continue
        bits.append((table.get(word, word[0]), width(k)))
        k += 1
        table[grown] = 258 + len(table)
        word = bytes([byte])
        if k == limit:
            bits.append((256, width(k)))
            table, k, limit = {}, 0, next(plan, 3838)
    bits.append((table.get(word, word[0]), width(k)))
    bits.append((257, width(k + 1)))
    value = total = 0
    for code, w in bits:
        value, total = (value << w) | code, total + w
    pad = -total % 8
    return (value << pad).to_bytes((total + pad) // 8, "big"), total


def test_the_lzw_walk_follows_clears_wherever_they_fall():
    data = pattern(120, 160, 9).tobytes()
    for plan in ([3838] * 20, [300, 3838, 3838, 41, 3838, 3838, 3838, 700], [5, 6, 7] * 40):
        stream, length = _lzw(data, plan)
        assert imagecodecs.lzw_decode(stream) == data
        assert lossless.lzw_end(stream) == length
        assert lossless.clean_lzw(stream + TEXT, (len(data),) * 2) == (stream, [("trailing data", TEXT)])


def test_lzw_padding_bits_after_eoi_are_zeroed():
    for seed in range(20):
        stream = imagecodecs.lzw_encode(pattern(16, 16, seed).tobytes())
        spare = len(stream) * 8 - lossless.lzw_end(stream)
        if spare:
            break
    dirty = stream[:-1] + bytes([stream[-1] | ((1 << spare) - 1)])
    assert lossless.clean_lzw(dirty, (768, 768)) == (stream, [("padding bits", b"")])


def test_packbits_and_uncompressed_stop_at_the_size_the_strip_needs():
    raw = bytes(range(200)) * 3
    packed = imagecodecs.packbits_encode(raw)
    assert lossless.clean_packbits(packed, (600, 600)) == (packed, [])
    assert lossless.clean_packbits(packed + TEXT, (600, 600)) == (packed, [("trailing data", TEXT)])
    with pytest.raises(MalformedStream):
        lossless.clean_packbits(packed, (590, 600))    # the last run overshoots
    assert lossless.clean_uncompressed(raw + TEXT, (600, 600)) == (raw, [("trailing data", TEXT)])
    with pytest.raises(MalformedStream):
        lossless.clean_uncompressed(raw[:-1], (600, 600))


def test_decoded_sizes_follow_the_tiff_geometry(tmp_path):
    from wsideid.containers.tiff.geometry import decoded_sizes
    from wsideid.containers.tiff.reader import TiffFile

    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, pattern(100, 30, 1), rowsperstrip=16, photometric="rgb",
                     compression="lzw")
    with TiffFile(path) as tiff:
        need, alt = decoded_sizes(tiff.ifds[0], tiff.byteorder, 7)
    assert need.tolist() == [16 * 90] * 6 + [4 * 90] and alt.tolist() == [16 * 90] * 7


# ---- c. what cannot be parsed is refused, not released ---------------------------------------

def test_text_right_after_soi_refuses_the_slide(tmp_path):
    src = copy_of(tmp_path, CMU)
    tile = read_run(src, 0, 5)
    replace_run(src, 0, 5, tile[:2] + TEXT + tile[2:])   # libjpeg skips it with a warning
    assert_rejected(src, "IFD 0 run 5: image data outside its codec's grammar (JPEG marker "
                         "expected at byte 2); the slide is refused")


def test_text_before_eoc_refuses_the_slide(tmp_path):
    src = copy_of(tmp_path, TCGA)
    tile = read_run(src, 0, 5)
    replace_run(src, 0, 5, tile[:-2] + TEXT + tile[-2:])   # OpenJPEG decodes it
    assert_rejected(src, "IFD 0 run 5: image data outside its codec's grammar (unexpected "
                         "bytes after the last JPEG 2000 tile-part)")


def test_a_kept_image_in_a_codec_without_a_grammar_refuses_the_slide(tmp_path):
    src = tmp_path / "webp.tif"
    tifffile.imwrite(src, pattern(256, 256, 1), tile=(128, 128), compression="webp",
                     photometric="rgb")
    assert_rejected(src, "IFD 0: webp image data cannot be checked for hidden text")


def test_an_unparseable_strip_of_a_dropped_image_is_zeroed_not_refused(tmp_path):
    src = copy_of(tmp_path, CMU)
    replace_run(src, 3, 0, TEXT * 4)      # the macro, dropped by default
    deid(src)


def test_an_unparseable_dicom_frame_refuses_the_slide(tmp_path):
    def change(ds, frames):
        return [frames[0][:2] + TEXT + frames[0][2:]], b""

    folder = _series(tmp_path, BOXES, change)
    proc = run("deid", folder, "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert "instance 0 frame 0: outside its codec's grammar (JPEG marker expected at byte 2)" in proc.stderr
    assert found_needles(all_files(tmp_path / "out"), NEEDLES) == {}


def test_text_in_the_basic_offset_table_is_not_copied(tmp_path):
    original: list[bytes] = []

    def change(ds, frames):
        original.extend(frames)
        return frames, struct.pack("<I", 0) + TEXT + b"\x00" * 3

    out = deid(_series(tmp_path, BOXES, change))
    assert [f.rstrip(b"\x00") for f in _out_frames(out)] == [f.rstrip(b"\x00") for f in original]


def test_a_basic_offset_table_that_matches_the_frames_is_copied(tmp_path):
    def change(ds, frames):
        offsets, at = [], 0
        for f in frames:
            offsets.append(at)
            at += 8 + len(f) + len(f) % 2
        return frames, struct.pack(f"<{len(offsets)}I", *offsets)

    folder = _series(tmp_path, GCP, change)
    out = deid(folder)
    src, dst = folder / "x.dcm", output_file(out, ".dcm")
    bot = lambda path: pydicom.dcmread(path).PixelData[8:8 + 4 * 28]   # noqa: E731
    assert bot(dst) == bot(src)


def test_an_extended_offset_table_that_does_not_fit_is_removed(tmp_path):
    def change(ds, frames):
        ds.ExtendedOffsetTable = TEXT[:32]
        ds.ExtendedOffsetTableLengths = TEXT[:32]
        return frames, b""

    out = deid(_series(tmp_path, GCP, change))
    ds = pydicom.dcmread(output_file(out, ".dcm"))
    assert "ExtendedOffsetTable" not in ds and "ExtendedOffsetTableLengths" not in ds


def test_native_pixel_data_longer_than_its_frames_refuses_the_slide(tmp_path):
    folder = tmp_path / "in" / "native"
    folder.mkdir(parents=True)
    shutil.copy(shared_slide("dicom/openslide-boxes/boxes_0.dcm"), folder)   # the volume
    ds = pydicom.dcmread(shared_slide("dicom/openslide-boxes/boxes_1.dcm"))  # its thumbnail
    ds.PixelData = bytes(ds.PixelData) + TEXT + b"\x00"
    ds.save_as(folder / "x.dcm", enforce_file_format=True)
    proc = run("deid", folder, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "native pixel data of 802 bytes where its frames need 768" in proc.stderr


def test_a_fragment_padding_byte_that_is_not_zero_goes(tmp_path):
    original: list[bytes] = []

    def change(ds, frames):
        original.extend(frames)
        assert frames[0].endswith(b"\xff\xd9\x00")    # an odd codestream and its NUL (PS3.5 A.4)
        frames[0] = frames[0][:-1] + b"Z"
        return frames, b""

    out = deid(_series(tmp_path, GCP, change))
    assert _out_frames(out)[0] == original[0]


def test_a_frame_in_several_fragments_is_checked_whole(tmp_path):
    original: list[bytes] = []

    def split(ds, frames):
        original.extend(frames)
        half = len(frames[0]) // 4 * 2
        return [frames[0][:half], frames[0][half:]] + frames[1:], b""

    out = deid(_series(tmp_path, GCP, split))
    assert _out_frames(out) == original

    def split_with_text(ds, frames):
        fragments, bot = split(ds, frames)
        fragments[1] = fragments[1].rstrip(b"\x00") + TEXT
        return fragments, bot

    proc = run("deid", _series(tmp_path / "text", GCP, split_with_text), "-o", tmp_path / "out2")
    assert proc.returncode == 2 and "frame 0 spans 2 fragments and holds trailing data" in proc.stderr


def test_frames_in_a_transfer_syntax_without_a_grammar_refuse_the_slide(tmp_path):
    from pydicom.uid import RLELossless

    folder = tmp_path / "in" / "rle"
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(shared_slide("dicom/openslide-boxes/boxes_0.dcm"))  # the volume
    ds.decompress()
    ds.compress(RLELossless)
    ds.save_as(folder / "x.dcm", enforce_file_format=True)
    proc = run("deid", folder, "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert "frames in transfer syntax 1.2.840.10008.1.2.5 cannot be checked" in proc.stderr


# ---- d. MIRAX camera positions ----------------------------------------------------------------

def _mirax(tmp_path: Path, stitching: bool) -> Path:
    from fixtures.mrxs import MrxsSpec, write_mrxs

    return write_mrxs(tmp_path / "in" / "slide.mrxs", MrxsSpec(stitching=stitching, plant=False))


def _position_record(mrxs: Path):
    from wsideid.adapters.mrxs import read_slide

    slide = read_slide(mrxs)
    [value] = [v for v in slide.nonhier_values()
               if v.layer_name in ("VIMSLIDE_POSITION_BUFFER", "StitchingIntensityLayer")]
    [(a, b, offset, length, fileno)] = list(value.record.items())
    return slide.data_paths[fileno], (a, b, offset, length, fileno)


def _set_record(mrxs: Path, item: tuple, data: bytes) -> None:
    """Point the record at `data`, appended to its data file."""
    path, _ = _position_record(mrxs)
    index = mrxs.with_suffix("") / "Index.dat"
    old = struct.pack("<iiiii", *item)
    with open(path, "ab") as fh:
        at = fh.tell()
        fh.write(data)
    new = struct.pack("<iiiii", item[0], item[1], at, len(data), item[4])
    raw = index.read_bytes()
    assert raw.count(old) == 1
    index.write_bytes(raw.replace(old, new))


@pytest.mark.parametrize("stitching", [False, True])
def test_text_appended_to_the_camera_positions_is_cut(tmp_path, stitching):
    mrxs = _mirax(tmp_path, stitching)
    path, item = _position_record(mrxs)
    stored = path.read_bytes()[item[2]:item[2] + item[3]]
    before = region(mrxs, 0, 0, 600, 400)
    _set_record(mrxs, item, stored + TEXT)
    out = deid(mrxs)
    assert np.array_equal(region(output_file(out, ".mrxs"), 0, 0, 600, 400), before)


@pytest.mark.parametrize("stitching", [False, True])
@pytest.mark.parametrize("where", ["flag", "coordinate"])
def test_camera_positions_no_scanner_writes_refuse_the_slide(tmp_path, stitching, where):
    mrxs = _mirax(tmp_path, stitching)
    path, item = _position_record(mrxs)
    stored = path.read_bytes()[item[2]:item[2] + item[3]]
    positions = bytearray(zlib.decompress(stored) if stitching else stored)
    if where == "flag":
        positions[9] = ord("Z")
    else:
        positions[10:14] = b"MRN4"
    _set_record(mrxs, item, zlib.compress(bytes(positions)) if stitching else bytes(positions))
    proc = run("deid", mrxs, "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert ("flag value 90" if where == "flag" else "far outside the slide") in proc.stderr


def test_an_unparseable_mirax_tile_refuses_the_slide(tmp_path):
    from fixtures.mrxs import MrxsSpec, write_mrxs
    from wsideid.adapters.mrxs import read_slide

    mrxs = write_mrxs(tmp_path / "in" / "slide.mrxs", MrxsSpec(plant=False))
    slide = read_slide(mrxs)
    _, offset, _, fileno = next(iter(slide.index.hier[0].items()))
    with open(slide.data_paths[fileno], "r+b") as fh:    # text right after SOI, same length
        fh.seek(offset + 2)
        fh.write(TEXT[:8])
    proc = run("deid", mrxs, "-o", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "zoom level 0: zoom level tile 0 (data file" in proc.stderr
    assert "outside its codec's grammar (JPEG marker expected at byte 2)" in proc.stderr


def test_mirax_levels_in_a_codec_without_a_grammar_refuse_the_slide(tmp_path):
    from fixtures.mrxs import MrxsSpec, write_mrxs

    mrxs = write_mrxs(tmp_path / "in" / "slide.mrxs", MrxsSpec(plant=False))
    ini = mrxs.with_suffix("") / "Slidedat.ini"
    ini.write_bytes(ini.read_bytes().replace(b"IMAGE_FORMAT = JPEG", b"IMAGE_FORMAT = BMP24", 1))
    proc = run("deid", mrxs, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "BMP24 images cannot be checked for hidden text" in proc.stderr


# ---- e. JFIF and Adobe segments: kept only with every byte defined, else canonical -----------

def test_an_adobe_transform_no_reader_knows_is_refused(tmp_path):
    """Transform code 7 (Adobe TN 5116 defines 0-2): OpenSlide refuses to decode the tiles, so
    the slide is refused before anything is written (the input is broken for its readers)."""
    src = copy_of(tmp_path, CMU)
    tile = read_run(src, 0, 0)
    replace_run(src, 0, 0, tile[:2] + _segment(0xEE, b"Adobe" + b"MRN471" + bytes([7])) + tile[2:])
    proc = run("deid", src, "-o", src.parent.parent / "out")
    assert proc.returncode == 2 and "Unknown Adobe color transform code 7" in proc.stderr


@pytest.mark.parametrize("transform", [0, 1])
def test_adobe_segments_with_free_bytes_are_rewritten_with_the_same_meaning(tmp_path, transform):
    src = copy_of(tmp_path, CMU)
    for i in range(8):
        tile = read_run(src, 0, i)
        chunk = b"MRN471" if i % 2 == 0 else b"ZEBULN"
        replace_run(src, 0, i, tile[:2] + _segment(0xEE, b"Adobe" + chunk + bytes([transform]))
                    + tile[2:])
    before = region(src, 0, 0, 1920, 240)
    out = src.parent.parent / "out"
    run("deid", src, "-o", out, check=0)
    assert found_needles(all_files(out), ["MRN471", "ZEBULN"]) == {}
    dst = output_file(out, ".svs")
    assert np.array_equal(region(dst, 0, 0, 1920, 240), before)
    expected = b"Adobe\x00\x64\x00\x00\x00\x00" + bytes([transform])
    assert read_run(dst, 0, 0)[2:18] == _segment(0xEE, expected)


def test_a_jfif_density_with_text_is_rewritten(tmp_path):
    src = copy_of(tmp_path, OME)
    tile = read_run(src, 0, 0)
    assert tile[2:4] == b"\xff\xe0" and tile[6:11] == b"JFIF\x00"
    replace_run(src, 0, 0, tile[:13] + b"\x00" + b"MRN4" + tile[18:])
    out = src.parent.parent / "out"
    run("deid", src, "-o", out, check=0)
    assert found_needles(all_files(out), ["MRN4"]) == {}
    dst = output_file(out, ".tif")
    assert read_run(dst, 0, 0) == tile
    assert np.array_equal(tifffile.imread(dst, key=0), tifffile.imread(src, key=0))


def test_jfif_and_adobe_values_outside_their_ranges_are_canonical():
    jfif = b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00"
    assert segments.jfif_ok(jfif)
    for bad in (b"JFIF\x00\x02\x02\x00\x00\x01\x00\x01\x00\x00",    # version 2
                b"JFIF\x00\x01\x02\x05\x00\x01\x00\x01\x00\x00",    # units 5
                b"JFIF\x00\x01\x02\x00\x4d\x52\x4e\x34\x00\x00"):   # density "MRN4"
        assert not segments.jfif_ok(bad) and segments.jfif_ok(segments.canonical_jfif(bad))
    assert segments.adobe_ok(b"Adobe\x00\x64\x80\x00\x00\x00\x01")
    assert not segments.adobe_ok(b"Adobe\x00\x64\x00\x00\x00\x00\x03")
    assert segments.canonical_adobe(b"Adobe\x00\x64\x00\x00\x00\x00\x03", 4)[-1] == 2   # YCCK


# ---- f. other bytes outside the grammar ------------------------------------------------------

def _jpeg() -> bytes:
    return imagecodecs.jpeg8_encode(pattern(32, 32, 4), level=85)


def test_fill_bytes_and_unused_scan_fields_are_rewritten():
    base = _jpeg()
    sos = base.find(b"\xff\xda")
    filled = base[:sos] + b"\xff" * 5 + base[sos:]
    assert segments.clean_jpeg(filled) == (base, [("fill bytes", b"")])
    n = base[sos + 4]
    spectral = sos + 5 + 2 * n
    assert base[spectral:spectral + 3] == b"\x00\x3f\x00"
    dirty = base[:spectral] + b"MRN" + base[spectral + 3:]
    assert segments.clean_jpeg(dirty) == (base, [("SOS spectral fields", b"")])
    assert np.array_equal(imagecodecs.jpeg8_decode(dirty), imagecodecs.jpeg8_decode(base))


def test_header_segments_longer_than_their_fields_are_refused():
    base = _jpeg()
    for marker in (0xDB, 0xC4, 0xC0, 0xDD):
        at = base.find(bytes([0xFF, marker])) if marker != 0xDD else -1
        if at < 0:     # DRI: add one of the right length, then one byte too long
            at = base.find(b"\xff\xda")
            base = base[:at] + _segment(0xDD, b"\x00\x00") + base[at:]
            assert segments.clean_jpeg(base)[1] == []
        length = struct.unpack_from(">H", base, at + 2)[0]
        end = at + 2 + length
        longer = (base[:at + 2] + struct.pack(">H", length + 3) + base[at + 4:end] + b"MRN"
                  + base[end:])
        with pytest.raises(MalformedStream):
            segments.clean_jpeg(longer)
    with pytest.raises(MalformedStream):     # a JPEG extension marker (JPGn)
        segments.clean_jpeg(base[:2] + _segment(0xF7, b"MRN-4711") + base[2:])


def test_j2k_marker_segments_are_checked_against_their_syntax():
    base = imagecodecs.jpeg2k_encode(pattern(32, 32, 5), level=30, codecformat="J2K")
    siz_end = 4 + struct.unpack_from(">H", base, 4)[0]
    cod = base.find(b"\xff\x52")
    length = struct.unpack_from(">H", base, cod + 2)[0]
    longer = (base[:cod + 2] + struct.pack(">H", length + 3) + base[cod + 4:cod + 2 + length]
              + b"MRN" + base[cod + 2 + length:])
    for bad in (longer, base[:siz_end] + _segment(0x6F, TEXT) + base[siz_end:]):
        with pytest.raises(MalformedStream):
            j2k.clean_j2k(bad)
    crg = base[:siz_end] + _segment(0x63, b"MRN4711\x00" * 3 + b"") + base[siz_end:]
    assert j2k.clean_j2k(crg) == (base, [("CRG", b"")])


def test_tlm_and_plt_stay_only_when_they_describe_the_tile_parts():
    base = _tiled_j2k(plt=True)
    assert b"\xff\x58" in base and j2k.clean_j2k(base) == (base, [])
    parts = _tile_parts(base)
    lengths = [struct.unpack_from(">I", base, p + 6)[0] for p in parts]
    siz_end = 4 + struct.unpack_from(">H", base, 4)[0]

    def with_tlm(values) -> bytes:
        body = b"\x00\x50" + b"".join(struct.pack(">BI", i, v) for i, v in enumerate(values))
        return base[:siz_end] + _segment(0x55, body) + base[siz_end:]

    assert j2k.clean_j2k(with_tlm(lengths)) == (with_tlm(lengths), [])
    wrong = with_tlm(lengths[:-1] + [0x4D524E34])
    assert j2k.clean_j2k(wrong) == (base, [("TLM", b"")])
    no_plt = _tiled_j2k(plt=False)
    # a PLT whose packet lengths do not add up to its tile-part goes
    plt = parts[0] + 12
    assert base[plt:plt + 2] == b"\xff\x58"
    plt_len = struct.unpack_from(">H", base, plt + 2)[0]
    fake = _segment(0x58, b"\x00" + b"\x7f" * (plt_len - 3))
    dirty = base[:plt] + fake + base[plt + 2 + plt_len:]
    cleaned, removed = j2k.clean_j2k(dirty)
    assert removed == [("PLT", b"")] and b"\xff\x58" not in cleaned[:_tile_parts(cleaned)[1]]
    assert np.array_equal(imagecodecs.jpeg2k_decode(cleaned), imagecodecs.jpeg2k_decode(no_plt))


def _png(extra: bytes = b"", after_idat: bytes = b"") -> bytes:
    img = pattern(8, 8, 6)
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(8))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (png.SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"Comment\x00" + TEXT) + chunk(b"IDAT", zlib.compress(raw + extra)
                                                            + after_idat)
            + chunk(b"IEND", b""))


def test_png_image_data_must_end_with_its_zlib_stream():
    cleaned, removed = png.clean_png(_png())
    assert removed[0][0] == "tEXt" and TEXT not in cleaned
    for bad in (_png(after_idat=TEXT), _png(extra=TEXT)):
        with pytest.raises(MalformedStream):
            png.clean_png(bad)
    broken = bytearray(_png())
    broken[-1] ^= 1          # IEND's CRC
    with pytest.raises(MalformedStream):
        png.clean_png(bytes(broken))


@pytest.mark.xfail(strict=True, reason="slack before RSTn/EOI is inside the entropy-coded data: "
                   "finding it means Huffman-decoding every tile (docs/benchmarks.md)")
def test_text_before_a_restart_marker_is_found():
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(noise).save(buf, "JPEG", quality=90, restart_marker_rows=1)
    stream = buf.getvalue()
    rst = stream.find(b"\xff\xd0", segments.scan_start(stream))
    dirty = stream[:rst] + TEXT + stream[rst:]     # libjpeg: "extraneous bytes before marker"
    assert segments.clean_jpeg(dirty)[1]


# ---- the screens never pass what the full parse would change ---------------------------------

def _real_streams() -> list[tuple[str, bytes]]:
    out = []
    for rel, codec in ((OME, "jpeg"), (TCGA, "j2k"), ("ndpi/test3-DAPI-2-387.ndpi", "jpeg")):
        with tifffile.TiffFile(shared_slide(rel)) as tf, open(shared_slide(rel), "rb") as fh:
            page = tf.pages[0] if codec == "j2k" or rel == OME else tf.pages[4]
            for off, n in list(zip(page.dataoffsets, page.databytecounts))[:3]:
                fh.seek(off)
                out.append((codec, fh.read(n)))
    out.append(("jpeg", _jpeg()))
    out.append(("j2k", imagecodecs.jpeg2k_encode(pattern(16, 16, 3), level=40, codecformat="J2K")))
    return out


def _mutations(stream: bytes, rng: np.random.Generator) -> list[bytes]:
    out = []
    header = max(4, min(len(stream) - 2, 700))
    for _ in range(60):
        data = bytearray(stream)
        kind = rng.integers(0, 4)
        at = int(rng.integers(2, header))
        if kind == 0:       # a byte of the header changed
            data[at] = int(rng.integers(0, 256))
        elif kind == 1:     # bytes inserted
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 6))).astype(np.uint8).tobytes()
        elif kind == 2:     # a segment inserted at a marker
            marker = data.find(b"\xff", 2)
            data[marker:marker] = _segment(int(rng.integers(0x01, 0xFF)), b"MRN" * int(rng.integers(0, 3)))
        else:               # something after the end
            data += rng.integers(0, 256, int(rng.integers(1, 4))).astype(np.uint8).tobytes()
        out.append(bytes(data))
    return out


def test_a_stream_the_screen_passes_is_one_the_parse_leaves_alone():
    rng = np.random.default_rng(2024)
    for codec, stream in _real_streams():
        streams = [stream] + _mutations(stream, rng)
        buf = np.frombuffer(b"".join(streams), np.uint8)
        offs = np.cumsum([0] + [len(s) for s in streams[:-1]]).astype(np.int64)
        flags = codestreams.SCREENS[codec](buf, offs, np.array([len(s) for s in streams]))
        for stream_, flagged in zip(streams, flags.tolist()):
            if flagged:
                continue
            assert codestreams.clean_stream(stream_, codec) == (stream_, []), stream_[:40]


# ---- g. tables no scan selects carry free bytes: they go; used ones are checked ---------------

def _dht(tc_th: int, symbols: bytes) -> bytes:
    """One Huffman table body: every code 4 bits long (a valid code for up to 16 symbols)."""
    bits = [0] * 16
    bits[3] = len(symbols)
    return bytes([tc_th]) + bytes(bits) + symbols


def _tables_of(stream: bytes) -> dict[int, list[bytes]]:
    """{marker: [segment bodies]} of the DQT and DHT segments of a stream."""
    found: dict[int, list[bytes]] = {}
    pos = 2
    while pos + 4 <= len(stream) and stream[pos + 1] not in (0xDA, 0xD9):
        length = struct.unpack_from(">H", stream, pos + 2)[0]
        if stream[pos + 1] in (0xDB, 0xC4):
            found.setdefault(stream[pos + 1], []).append(stream[pos + 4:pos + 2 + length])
        pos += 2 + length
    return found


def test_tables_no_scan_selects_are_removed_from_jpegtables_and_tiles(tmp_path):
    src = copy_of(tmp_path, CMU)
    with tifffile.TiffFile(src) as tf:
        tables = tf.pages[0].tags["JPEGTables"].value
    dc0 = next(b for b in _tables_of(tables)[0xC4] if b[0] == 0x00)
    # in JPEGTables: an AC table 3 no tile selects, spelling a name in its symbols
    from tiffpatch import set_tag
    unused = _segment(0xC4, _dht(0x13, b"ZEBULONQUACKEN"))
    set_tag(src, 0, 347, 7, tables[:-2] + unused + b"\xff\xd9")
    original = read_run(src, 0, 0)
    # in a tile: one DHT segment with a used table (DC 0, as in JPEGTables) and an unused one,
    # and a quantisation table 3 that the frame does not select
    planted = (_segment(0xC4, dc0[:17 + sum(dc0[1:17])] + _dht(0x12, b"QUACKENBUSH"))
               + _segment(0xDB, b"\x03" + b"MRN-4711-0815-" * 4 + b"MRN-4711"))
    replace_run(src, 0, 0, original[:2] + planted + original[2:])
    assert np.array_equal(region(src, 0, 0, 512, 512), region(shared_slide(CMU), 0, 0, 512, 512))
    out = deid(src)
    dst = output_file(out, ".svs")
    with tifffile.TiffFile(dst) as tf:
        assert tf.pages[0].tags["JPEGTables"].value == tables
    dc0_table = dc0[:17 + sum(dc0[1:17])]
    assert read_run(dst, 0, 0) == original[:2] + _segment(0xC4, dc0_table) + original[2:]
    assert np.array_equal(region(dst, 0, 0, 512, 512), region(shared_slide(CMU), 0, 0, 512, 512))
    report = (out / "wsideid-report.json").read_text()
    assert "unused DHT table" in report and "unused DQT table" in report


def test_a_jpegtables_table_every_tile_defines_itself_is_removed(tmp_path):
    src = copy_of(tmp_path, CMU)
    with tifffile.TiffFile(src) as tf:
        tables = tf.pages[1].tags["JPEGTables"].value
        strips = len(tf.pages[1].dataoffsets)
    dqt0 = next(b for b in _tables_of(tables)[0xDB] if b[0] == 0x00)[:65]   # 8-bit table 0
    at = tables.find(dqt0)
    # JPEGTables' quantisation table 0 spells text; every strip defines its own table 0 (the
    # original), which is the one decoders read
    from tiffpatch import set_tag
    set_tag(src, 1, 347, 7, tables[:at + 1] + TEXT[:32] * 2 + tables[at + 65:])
    for i in range(strips):
        strip = read_run(src, 1, i)
        replace_run(src, 1, i, strip[:2] + _segment(0xDB, dqt0) + strip[2:])
    out = deid(src)
    dst = output_file(out, ".svs")
    with tifffile.TiffFile(dst) as tf, tifffile.TiffFile(shared_slide(CMU)) as before:
        assert TEXT[:32] not in tf.pages[1].tags["JPEGTables"].value
        assert np.array_equal(tf.pages[1].asarray(), before.pages[1].asarray())


def test_an_unused_table_in_a_dicom_frame_is_removed(tmp_path):
    original: list[bytes] = []

    def change(ds, frames):
        original.extend(frames)
        frames[0] = frames[0][:2] + _segment(0xDB, b"\x03" + TEXT[:32] * 2) + frames[0][2:]
        return frames, b""

    out = deid(_series(tmp_path, BOXES, change))
    assert _out_frames(out)[0].rstrip(b"\x00") == original[0].rstrip(b"\x00")


def test_a_used_huffman_table_with_a_symbol_out_of_range_refuses_the_slide(tmp_path):
    src = copy_of(tmp_path, CMU)
    with tifffile.TiffFile(src) as tf:
        tables = tf.pages[0].tags["JPEGTables"].value
    at = tables.find(b"\xff\xc4\x00\x1f\x00")      # the DC table 0: 12 symbols 0..11
    assert at > 0 and tables[at + 21 + 11] == 11
    bad = tables[:at + 21 + 11] + b"M" + tables[at + 21 + 12:]     # DC category 77
    from tiffpatch import set_tag
    set_tag(src, 0, 347, 7, bad)
    assert_rejected(src, "JPEGTables: JPEG DHT table 0/0 holds values outside its range")


def test_tables_defined_twice_or_after_the_scan_are_never_read_and_go():
    base = _jpeg()
    first = base.find(b"\xff\xc4")
    dc0 = _tables_of(base)[0xC4][0]
    twice = base[:first] + _segment(0xC4, dc0) + base[first:]
    assert segments.clean_jpeg(twice) == (base, [("unused DHT table", b"")])
    eoi = len(base) - 2
    late = base[:eoi] + _segment(0xDB, b"\x02" + TEXT + bytes(64 - len(TEXT))) + base[eoi:]
    assert segments.clean_jpeg(late) == (base, [("unused DQT table", b"")])
    # a segment holding a used and an unused table keeps the used one, with its new length
    both = (base[:first] + _segment(0xC4, dc0 + _dht(0x13, b"ZEBULON"))
            + base[first + 4 + len(dc0):])
    assert segments.clean_jpeg(both) == (base, [("unused DHT table", b"")])
    streams = [base, twice, late, both]
    buf = np.frombuffer(b"".join(streams), np.uint8)
    offs = np.cumsum([0] + [len(s) for s in streams[:-1]]).astype(np.int64)
    flags = segments.screen_jpeg(buf, offs, np.array([len(s) for s in streams]))
    assert flags.tolist() == [False, True, True, True]


def test_huffman_symbols_outside_their_class_are_malformed():
    base = _jpeg()
    ac0 = base.find(b"\xff\xc4\x00\xb5\x10")
    dc0 = base.find(b"\xff\xc4\x00\x1f\x00")
    for at, symbol in ((ac0 + 21, 0x1B), (ac0 + 21, 0x30), (dc0 + 21, 12)):
        odd = base[:at] + bytes([symbol]) + base[at + 1:]    # AC size 11, AC 3/0, DC 12
        with pytest.raises(MalformedStream, match="outside its range"):
            segments.clean_jpeg(odd)
        buf = np.frombuffer(odd, np.uint8)
        assert segments.screen_jpeg(buf, np.array([0]), np.array([len(odd)])).tolist() == [True]
    # counts that leave a byte over inside the segment
    longer = base[:dc0 + 2] + b"\x00\x20" + base[dc0 + 4:dc0 + 33] + b"M" + base[dc0 + 33:]
    with pytest.raises(MalformedStream):
        segments.clean_jpeg(longer)
