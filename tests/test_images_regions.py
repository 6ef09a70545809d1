"""Region redaction: GeoJSON and rectangles, level scaling, outward rasterising, tile redaction
per codec (JPEG in the DCT domain, others re-encoded), NDPI restart intervals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, box

from wsideid.images.regions import (RegionError, Regions, from_rectangles, mask_for_tile,
                                    read_geojson, tiles_touched)


# ---- regions -------------------------------------------------------------------------------

def _feature(coords, kind="Polygon"):
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
            "properties": {"name": "Dr Secretname pen note"}}


SQUARE = [[[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]]]
HOLE = [[15, 15], [25, 15], [25, 25], [15, 25], [15, 15]]


def _reference_mask(geom, x0, y0, w, h):
    """Slow but obvious: a pixel is masked when the region covers some area of its square."""
    return np.array([[geom.intersection(box(x0 + i, y0 + j, x0 + i + 1, y0 + j + 1)).area > 0
                      for i in range(w)] for j in range(h)])


def test_geojson_feature_collection_list_feature_and_bare_geometry_agree():
    fc = {"type": "FeatureCollection", "features": [_feature(SQUARE)]}
    forms = [fc, [_feature(SQUARE)], _feature(SQUARE), {"type": "Polygon", "coordinates": SQUARE}]
    areas = {read_geojson(json.dumps(f)).geometry.area for f in forms}
    assert areas == {400.0}


def test_geojson_holes_and_multipolygon_are_kept():
    regions = read_geojson(json.dumps(_feature([SQUARE[0], HOLE])))
    assert regions.geometry.area == 400 - 100
    mask = mask_for_tile(regions, 0, 0, 40, 40)
    assert mask[12, 12] and not mask[20, 20] and mask[15:25, 15:25].sum() == 0
    multi = read_geojson(json.dumps(_feature([SQUARE, [[[50, 50], [60, 50], [60, 60], [50, 50]]]],
                                             "MultiPolygon")))
    assert multi.geometry.area == 400 + 50


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    (json.dumps(_feature([[0, 0], [1, 1]], "LineString")), "LineString is not supported"),
    (json.dumps({"type": "Secretname Blob", "coordinates": []}), "unknown geometry type"),
    (json.dumps(_feature([])), "empty polygon"),
    (json.dumps(_feature([[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]])), "not valid (Self-intersection)"),
    (json.dumps(_feature([[[0, 0], [10, 10], [0, 0], [10, 10]]])), "fewer than 3 distinct"),
    (json.dumps(_feature([[[0, 0], [10, "x"], [0, 10]]])), "not a pair of numbers"),
    (json.dumps({"type": "FeatureCollection", "features": []}), "no polygon"),
])
def test_bad_geojson_gives_one_line_without_content(text, words):
    with pytest.raises(RegionError) as err:
        read_geojson(text)
    message = str(err.value)
    assert words in message and "\n" not in message
    assert "Secretname" not in message and "10" not in message.replace("region 1", "")


def test_rectangles_mask_exactly_their_pixels():
    mask = mask_for_tile(from_rectangles([(10, 12, 5, 3)]), 0, 0, 32, 32)
    assert mask.sum() == 15 and mask[12:15, 10:15].all()
    with pytest.raises(RegionError):
        from_rectangles([(1, 2, 0, 4)])


def test_on_level_uses_the_slides_own_factors_and_masks_outward():
    regions = from_rectangles([(10, 10, 5, 5)])
    level = regions.on_level(4.1, 3.9)   # 2.44..3.66 x 2.56..3.85: pixels 2 and 3 each way
    mask = mask_for_tile(level, 0, 0, 8, 8)
    assert np.argwhere(mask).tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]


def test_region_on_another_level_rounds_outward_to_level0():
    regions = from_rectangles([(10, 10, 5, 5)]).to_level0(4.0002, 4.0002)
    assert regions.geometry.bounds == (40, 40, 61, 61)
    tri = Regions(Polygon([(1.5, 1.5), (9.2, 2.1), (3.3, 8.7)]))
    up = tri.to_level0(3, 3)
    # every level-1 pixel the triangle touches is wholly inside the level-0 region
    for j, i in np.argwhere(mask_for_tile(tri, 0, 0, 12, 12)):
        assert up.geometry.covers(box(3 * i, 3 * j, 3 * i + 3, 3 * j + 3))
    assert up.geometry.bounds == tuple(float(v) for v in up.pixel_bounds())


def test_check_inside_clips_and_refuses_outside():
    clipped = from_rectangles([(90, 90, 20, 20)]).check_inside(100, 100)
    assert clipped.geometry.bounds == (90, 90, 100, 100)
    with pytest.raises(RegionError, match="outside the image"):
        from_rectangles([(100, 0, 20, 20)]).check_inside(100, 100)


@pytest.mark.parametrize("seed", range(4))
def test_mask_equals_reference_for_random_polygons_with_holes(seed):
    rng = np.random.default_rng(seed)
    outer = shapely.convex_hull(shapely.MultiPoint(rng.uniform(-5, 45, (9, 2))))
    geom = outer.difference(shapely.Point(rng.uniform(15, 25, 2)).buffer(5))
    geom = shapely.affinity.scale(geom, 1 / 2.7, 1 / 3.1, origin=(0, 0))  # a coarse level
    mask = mask_for_tile(Regions(geom), 2, 1, 13, 11)
    assert mask is not None
    assert np.array_equal(mask, _reference_mask(geom, 2, 1, 13, 11))


def test_mask_none_when_tile_misses():
    regions = from_rectangles([(10, 10, 5, 5)])
    assert mask_for_tile(regions, 15, 0, 16, 16) is None       # touches only along x = 15
    assert mask_for_tile(regions, 100, 100, 16, 16) is None


@pytest.mark.parametrize("seed", range(3))
def test_tiles_touched_are_exactly_the_tiles_with_masked_pixels(seed):
    rng = np.random.default_rng(seed + 10)
    geom = shapely.convex_hull(shapely.MultiPoint(rng.uniform(0, 100, (7, 2))))
    geom = geom.union(box(64, 0, 80, 16))                        # edges on tile borders
    regions, tw, th = Regions(geom), 16, 12
    expected = [(c, r) for r in range(9) for c in range(7)
                if mask_for_tile(regions, c * tw, r * th, tw, th) is not None]
    assert tiles_touched(regions, tw, th, 7, 9) == expected
    assert (4, 0) in expected
    x0, y0, x1, y1 = regions.pixel_bounds()
    in_bounding_box = (min(7, -(-x1 // tw)) - x0 // tw) * (min(9, -(-y1 // th)) - y0 // th)
    assert len(expected) < in_bounding_box     # the exact test did drop some candidates


# ---- tile redaction ------------------------------------------------------------------------

import io  # noqa: E402
import struct  # noqa: E402
from pathlib import Path  # noqa: E402

import imagecodecs  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image  # noqa: E402

from fixtures.images import pattern  # noqa: E402
from wsideid.images import jpeg_entropy as je  # noqa: E402
from wsideid.images import turbo_coefs  # noqa: E402
from wsideid.images.redact import (RedactError, j2k_coding, redact_restart_intervals,  # noqa: E402
                                   redact_tile)

SLIDES = Path(__file__).resolve().parent.parent.parent / "shared" / "slides"


def _segments(stream: bytes):
    pos = 2
    while stream[pos + 1] != 0xDA:
        length = struct.unpack(">H", stream[pos + 2:pos + 4])[0]
        yield stream[pos + 1], stream[pos:pos + 2 + length]
        pos += 2 + length


def _abbreviate(full: bytes) -> tuple[bytes, bytes]:
    """Split a JPEG into a TIFF JPEGTables stream and an abbreviated tile (T.81 B.4, B.5)."""
    tables = [seg for m, seg in _segments(full) if m in (0xDB, 0xC4)]
    tile = full
    for seg in tables:
        tile = tile.replace(seg, b"", 1)
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", tile


def _with_tables(tile: bytes, tables: bytes) -> bytes:
    return tile[:2] + tables[2:-2] + tile[2:]


def _coefs(stream: bytes, tables: bytes | None = None) -> tuple[np.ndarray, je.Layout]:
    info = je.parse_jpeg(stream, tables)
    layout = je.block_layout(info)
    spans = je.interval_ends(stream, info.data_start, info.data_end)
    comp = layout.blocks()[0]
    per = info.restart_interval * layout.blocks_per_mcu if info.restart_interval else len(comp)
    parts = [je.decode_interval(stream[a:b], info, comp[n * per:(n + 1) * per])
             for n, (a, b) in enumerate(spans)]
    return np.concatenate(parts), layout


def _block_mask(layout: je.Layout, touched_blocks: np.ndarray, shape) -> np.ndarray:
    """Pixels covered by any of these blocks (in any component)."""
    comp, by, bx = layout.blocks()
    out = np.zeros((layout.mcus_y * 8 * max(layout.v), layout.mcus_x * 8 * max(layout.h)), bool)
    for c, y, x in zip(comp[touched_blocks], by[touched_blocks], bx[touched_blocks]):
        sx, sy = layout.scale[c]
        out[y * sy:(y + 1) * sy, x * sx:(x + 1) * sx] = True
    return out[:shape[0], :shape[1]]


def _turbo_decode(stream: bytes) -> np.ndarray:
    from turbojpeg import TJPF_RGB, TurboJPEG
    return TurboJPEG().decode(stream, pixel_format=TJPF_RGB)


MASK_RECT = (slice(50, 90), slice(100, 181))      # not block aligned on any side


def _mask(h=240, w=240):
    mask = np.zeros((h, w), bool)
    mask[MASK_RECT] = True
    mask[200, 5] = True                               # a single pixel far away
    return mask


@pytest.fixture(params=["turbo", "python"])
def decoder(request, monkeypatch):
    """Run a test with libjpeg-turbo reading coefficients, and with the Python decoder."""
    if request.param == "python":
        monkeypatch.setattr(turbo_coefs, "read_coefficients", lambda *a: None)
    else:
        assert turbo_coefs.available()
    return request.param


@pytest.mark.parametrize("subsampling, size", [("444", (240, 240)), ("422", (256, 256)),
                                               ("420", (240, 240)), ("420", (250, 260))])
def test_turbo_coefficients_equal_python_decoder(subsampling, size):
    full = imagecodecs.jpeg8_encode(pattern(*size, 2), level=80, subsampling=subsampling)
    tables, tile = _abbreviate(full)
    info = je.parse_jpeg(tile, tables)
    layout = je.block_layout(info)
    got = turbo_coefs.read_coefficients(tile, tables, info, layout)
    if size == (250, 260):     # libjpeg keeps no padding blocks there: Python decodes instead
        assert got is None
    else:
        assert np.array_equal(got, _coefs(tile, tables)[0])


@pytest.mark.parametrize("subsampling", ["444", "422", "420"])
def test_jpeg_dct_redaction_keeps_untouched_blocks_exactly(subsampling, decoder):
    full = imagecodecs.jpeg8_encode(pattern(240, 240, 3), level=85, subsampling=subsampling)
    tables, tile = _abbreviate(full)
    mask = _mask()
    out = redact_tile("jpeg", tile, mask, 0, tables)
    assert b"\xff\xc4" not in out and b"\xff\xdb" not in out   # still abbreviated
    before, layout = _coefs(tile, tables)
    after, _ = _coefs(out, tables)
    changed = (before != after).any(axis=1)
    comp, by, bx = layout.blocks()
    # exactly the blocks whose (luma-pixel) area meets the mask changed, and they are flat
    for c, (sx, sy) in enumerate(layout.scale):
        for i in np.flatnonzero(comp == c):
            hit = mask[by[i] * sy:(by[i] + 1) * sy, bx[i] * sx:(bx[i] + 1) * sx].any()
            assert changed[i] == hit or (hit and not before[i, 1:].any())
    assert not after[changed, 1:].any()
    # pixels: blocks no component touched are bit-identical, after libjpeg's upsampling
    a = imagecodecs.jpeg8_decode(tile, tables=tables)
    b = imagecodecs.jpeg8_decode(out, tables=tables)
    region = _block_mask(layout, changed, a.shape)
    if subsampling != "444":   # fancy upsampling lets a chroma block reach one pixel further
        grown = region.copy()
        grown[1:] |= region[:-1]; grown[:-1] |= region[1:]
        grown[:, 1:] |= grown[:, :-1].copy(); grown[:, :-1] |= grown[:, 1:].copy()
        region = grown
    assert np.array_equal(a[~region], b[~region])
    luma = _block_mask(layout, changed & (comp == 0), a.shape)
    assert (b[mask] == 0).all() and (b[luma & ~region] == 0).all()
    assert np.array_equal(_turbo_decode(_with_tables(out, tables)), b)


@pytest.mark.parametrize("fill", [0, 255, 200, 128])
def test_jpeg_fill_is_exact_in_rgb_jpeg_with_coarse_quantiser(fill):
    image = pattern(64, 64, 4)
    full = imagecodecs.jpeg8_encode(image, level=85, colorspace="RGB", outcolorspace="RGB")
    assert je.parse_jpeg(full).adobe_transform == 0      # libjpeg marks RGB with Adobe APP14
    mask = np.zeros((64, 64), bool)
    mask[8:24, 8:40] = True
    out = redact_tile("jpeg", full, mask, fill)
    b = imagecodecs.jpeg8_decode(out)
    q00 = int(je.parse_jpeg(full).qtables[0][0])
    assert q00 <= 8 and (b[mask] == fill).all()          # exact: every component is the fill
    assert np.array_equal(b[~mask], imagecodecs.jpeg8_decode(full)[~mask])


def test_jpeg_black_and_white_exact_even_with_a_coarse_quantiser():
    full = imagecodecs.jpeg8_encode(pattern(32, 32, 4), level=30)   # Q00 = 27, as CMU-1
    mask = np.ones((32, 32), bool)
    for fill in (0, 255):
        assert (imagecodecs.jpeg8_decode(redact_tile("jpeg", full, mask, fill)) == fill).all()
    grey = imagecodecs.jpeg8_decode(redact_tile("jpeg", full, mask, 200))
    assert np.abs(grey.astype(int) - 200).max() <= 27 // 16 + 1   # |error| <= Q00 / 16


def test_jpeg_output_drops_app_and_com_but_keeps_jfif():
    full = imagecodecs.jpeg8_encode(pattern(32, 32, 1), level=90)
    com, app1 = b"Dr Secretname", b"Exif\x00\x00Secretname"
    dirty = (full[:2] + b"\xff\xfe" + struct.pack(">H", len(com) + 2) + com
             + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + full[2:])
    out = redact_tile("jpeg", dirty, np.ones((4, 4), bool), 0)
    markers = [m for m, _ in _segments(out)]
    assert 0xFE not in markers and 0xE1 not in markers and 0xE0 in markers
    assert b"Secretname" not in out


def test_jpeg_with_restart_intervals_keeps_untouched_intervals_bytes(decoder):
    buf = io.BytesIO()
    Image.fromarray(pattern(64, 96, 5)).save(buf, "JPEG", quality=80, restart_marker_blocks=5)
    full = buf.getvalue()
    info = je.parse_jpeg(full)
    assert info.restart_interval == 5
    mask = np.zeros((64, 96), bool)
    mask[20:30, 40:50] = True
    out = redact_tile("jpeg", full, mask, 255)
    spans_a = je.interval_ends(full, info.data_start, info.data_end)
    info_b = je.parse_jpeg(out)
    spans_b = je.interval_ends(out, info_b.data_start, info_b.data_end)
    same = [full[a:b] == out[c:d] for (a, b), (c, d) in zip(spans_a, spans_b)]
    # 4:2:0, 16 x 16 MCUs, 6 per row: the mask meets MCUs 8 and 9, both in interval 1
    assert same == [True, False, True, True, True]
    b = imagecodecs.jpeg8_decode(out)
    assert (b[mask] == 255).all() and np.array_equal(b, _turbo_decode(out))


def test_jpeg_with_optimised_tables_gets_tables_of_its_own(decoder):
    image = np.full((64, 64, 3), 120, np.uint8)
    image[:8, :8] = 130
    full = imagecodecs.jpeg8_encode(image, level=90, optimize=True)
    tables, tile = _abbreviate(full)
    mask = np.zeros((64, 64), bool)
    mask[30:40, 30:40] = True
    out = redact_tile("jpeg", tile, mask, 0, tables)    # DC size 7 is not in these tables
    assert b"\xff\xc4" in out
    b = imagecodecs.jpeg8_decode(out, tables=tables)
    a = imagecodecs.jpeg8_decode(full)
    assert (b[mask] == 0).all() and np.array_equal(a[:24, :], b[:24, :])
    assert np.array_equal(b, _turbo_decode(_with_tables(out, tables)))


def test_jpeg_corrupt_or_progressive_is_refused(decoder):
    full = imagecodecs.jpeg8_encode(pattern(32, 32, 1), level=90)
    info = je.parse_jpeg(full)
    broken = full[:info.data_start] + b"\xff\x00" * 40 + full[info.data_end:]
    with pytest.raises(RedactError, match="corrupt"):
        redact_tile("jpeg", broken, np.ones((8, 8), bool), 0)
    # a tile the mask covers wholly is not decoded at all: its flat replacement is valid
    flat = redact_tile("jpeg", broken, np.ones((32, 32), bool), 0)
    assert (imagecodecs.jpeg8_decode(flat) == 0).all()
    buf = io.BytesIO()
    Image.fromarray(pattern(32, 32, 1)).save(buf, "JPEG", progressive=True)
    with pytest.raises(RedactError, match="baseline"):
        redact_tile("jpeg", buf.getvalue(), np.ones((32, 32), bool), 0)


@pytest.mark.skipif(not (SLIDES / "svs" / "CMU-1-Small-Region.svs").exists(), reason="no slide")
def test_real_aperio_rgb_tile_with_shared_tables(decoder):
    with tifffile.TiffFile(SLIDES / "svs" / "CMU-1-Small-Region.svs") as tf:
        page = tf.pages[0]
        tables = page.jpegtables
        tf.filehandle.seek(page.dataoffsets[40])
        tile = tf.filehandle.read(page.databytecounts[40])
    assert page.photometric == 2 and b"\xff\xdb" not in tile   # RGB, abbreviated
    mask = _mask()
    out = redact_tile("jpeg", tile, mask, 255, tables, colorspace="rgb")
    rgb = dict(tables=tables, colorspace="RGB", outcolorspace="RGB")
    a, b = imagecodecs.jpeg8_decode(tile, **rgb), imagecodecs.jpeg8_decode(out, **rgb)
    before, layout = _coefs(tile, tables)
    after, _ = _coefs(out, tables)
    region = _block_mask(layout, (before != after).any(axis=1), a.shape)
    assert (b[mask] == 255).all() and np.array_equal(a[~region], b[~region])
    assert not np.array_equal(a[region], b[region])


# ---- other codecs --------------------------------------------------------------------------

def _painted(image, mask, value):
    out = image.copy()
    out[mask] = value
    return out


@pytest.mark.parametrize("codec, predictor", [("lzw", 2), ("lzw", 1), ("deflate", 2),
                                              ("zlib", 1), ("none", 1)])
def test_lossless_tiff_codecs_round_trip(codec, predictor):
    image = pattern(48, 64, 6)
    raw = image if predictor == 1 else np.diff(image, axis=1, prepend=np.zeros_like(image[:, :1]))
    enc = {"lzw": imagecodecs.lzw_encode, "deflate": imagecodecs.zlib_encode,
           "zlib": imagecodecs.zlib_encode, "none": bytes}[codec](raw.tobytes())
    mask = np.zeros((48, 64), bool)
    mask[10:20, 5:50] = True
    out = redact_tile(codec, enc, mask, 0, shape=(48, 64, 3), dtype="uint8", predictor=predictor)
    dec = {"lzw": imagecodecs.lzw_decode, "deflate": imagecodecs.zlib_decode,
           "zlib": imagecodecs.zlib_decode, "none": bytes}[codec](out)
    got = np.frombuffer(dec, np.uint8).reshape(48, 64, 3)
    if predictor == 2:
        got = np.cumsum(got, axis=1, dtype=np.uint8)
    assert np.array_equal(got, _painted(image, mask, 0))


def test_sixteen_bit_big_endian_tile():
    image = (pattern(16, 16, 7)[..., 0].astype(np.uint16) * 200)
    enc = imagecodecs.zlib_encode(image.astype(">u2").tobytes())
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    out = redact_tile("deflate", enc, mask, 1000, shape=(16, 16), dtype="uint16", byteorder=">")
    got = np.frombuffer(imagecodecs.zlib_decode(out), ">u2").reshape(16, 16)
    assert np.array_equal(got, _painted(image, mask, 1000))


def test_png_round_trip():
    image = pattern(40, 40, 8)
    mask = np.zeros((40, 40), bool)
    mask[:10] = True
    out = redact_tile("png", imagecodecs.png_encode(image), mask, 255)
    assert np.array_equal(imagecodecs.png_decode(out), _painted(image, mask, 255))


def test_j2k_lossless_stays_lossless():
    image = pattern(64, 64, 9)
    data = imagecodecs.jpeg2k_encode(image, None, codecformat="J2K", reversible=True,
                                     resolutions=4)
    mask = np.zeros((64, 64), bool)
    mask[5:30, 7:9] = True
    out = redact_tile("jpeg2k", data, mask, 0)
    facts = j2k_coding(out)
    assert facts["reversible"] and facts["levels"] == 3 and facts["mct"]
    assert np.array_equal(imagecodecs.jpeg2k_decode(out), _painted(image, mask, 0))


@pytest.mark.parametrize("ycbcr", [False, True])
def test_j2k_lossy_keeps_rate_and_aperio_colour(ycbcr):
    image = pattern(128, 128, 10)
    data = imagecodecs.jpeg2k_encode(image, 40, codecformat="J2K", mct=not ycbcr)
    decoded = imagecodecs.jpeg2k_decode(data)
    mask = np.zeros((128, 128), bool)
    mask[40:60, 40:100] = True
    out = redact_tile("jpeg2k", data, mask, 0, ycbcr=ycbcr)
    facts = j2k_coding(out)
    assert not facts["reversible"] and facts["mct"] == (not ycbcr)
    assert 0.6 < len(out) / len(data) < 1.1                  # flat area costs little
    got = imagecodecs.jpeg2k_decode(out).astype(int)
    expect = np.array([0, 128, 128] if ycbcr else [0, 0, 0])
    assert np.abs(got[44:56, 44:96] - expect).max() <= 2
    keep = np.ones((128, 128), bool)
    keep[30:70, 30:110] = False
    error = got[keep] - decoded[keep].astype(int)
    assert np.sqrt((error ** 2).mean()) < 3                   # about the original quality


@pytest.mark.skipif(not (SLIDES / "svs" / "tcga-cr-7395-01a-01-ts1.svs").exists(),
                    reason="no slide")
def test_real_aperio_33005_tile():
    with tifffile.TiffFile(SLIDES / "svs" / "tcga-cr-7395-01a-01-ts1.svs") as tf:
        page = tf.pages[0]
        tf.filehandle.seek(page.dataoffsets[0])
        data = tf.filehandle.read(page.databytecounts[0])
    mask = np.zeros(page.chunks[:2], bool)
    mask[:20, :20] = True
    out = redact_tile("jpeg2k", data, mask, 0)
    assert (imagecodecs.jpeg2k_decode(out)[:16, :16] <= 2).all()
    assert j2k_coding(out)["reversible"] == j2k_coding(data)["reversible"]


def test_unknown_codec_refused():
    with pytest.raises(RedactError):
        redact_tile("webp", b"", np.ones((1, 1), bool), 0)


# ---- NDPI restart intervals ----------------------------------------------------------------

def _ndpi_level(path) -> tuple[bytes, list[int]]:
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        offset, count = (int(np.ravel(page.tags[t].value)[0]) for t in (273, 279))
        tf.filehandle.seek(offset)
        return tf.filehandle.read(count), [int(v) for v in page.tags[65426].value]


def _check_ndpi(jpeg, starts, regions, fill):
    new, new_starts = redact_restart_intervals(
        jpeg, starts, lambda x, y, w, h: mask_for_tile(regions, x, y, w, h), fill)
    from fixtures.ndpi import mcu_starts
    assert new_starts == mcu_starts(new) and new_starts[0] == starts[0]
    info = je.parse_jpeg(jpeg)
    old_spans = je.interval_ends(jpeg, info.data_start, info.data_end)
    info_b = je.parse_jpeg(new)
    new_spans = je.interval_ends(new, info_b.data_start, info_b.data_end)
    changed = [n for n, ((a, b), (c, d)) in enumerate(zip(old_spans, new_spans))
               if jpeg[a:b] != new[c:d]]
    a, b = imagecodecs.jpeg8_decode(jpeg), imagecodecs.jpeg8_decode(new)
    mask = mask_for_tile(regions, 0, 0, info.width, info.height)
    assert (b[mask] == fill).all()
    rows = np.flatnonzero((a != b).any(axis=(1, 2)))
    mcu_h = 8 * info.vmax
    assert sorted({r // mcu_h for r in rows}) == changed            # one MCU row per interval
    return changed


def test_ndpi_fixture_recodes_only_touched_intervals(tmp_path):
    from fixtures.ndpi import write_ndpi
    jpeg, starts = _ndpi_level(write_ndpi(tmp_path / "x.ndpi"))
    changed = _check_ndpi(jpeg, starts, from_rectangles([(100, 37, 300, 50)]), 255)
    assert changed == list(range(4, 11))


@pytest.mark.skipif(not (SLIDES / "ndpi" / "test3-DAPI-2-387.ndpi").exists(), reason="no slide")
def test_real_ndpi_level():
    jpeg, starts = _ndpi_level(SLIDES / "ndpi" / "test3-DAPI-2-387.ndpi")
    region = read_geojson(json.dumps(_feature([[[1000, 2000], [1400, 2010], [1200, 2300],
                                                [1000, 2000]]])))
    changed = _check_ndpi(jpeg, starts, region, 0)
    assert changed == list(range(2000 // 8, 2300 // 8 + 1))


def test_ndpi_mcu_starts_must_match():
    from fixtures.ndpi import _jpeg
    jpeg = _jpeg(pattern(32, 64, 1), True, [])
    from fixtures.ndpi import mcu_starts
    starts = mcu_starts(jpeg)
    with pytest.raises(RedactError, match="MCU starts"):
        redact_restart_intervals(jpeg, starts[:-1], lambda *a: None, 0)
