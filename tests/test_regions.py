"""Region redaction through every pyramid level (issue 12), end to end through the command
line on generated slides of every format and on real ones: the region reads as the fill on
every level and the thumbnail, everything else reads as before, only the pieces the region
touches change (and in a touched JPEG tile only the blocks it touches), text in the tissue is
gone at every level, readers open the output; `redact` changes nothing else; bad regions are
one error line, exit 2, nothing written."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tifffile
from PIL import Image, ImageDraw
from shapely import affinity
from shapely.geometry import Polygon, box

import fixtures.svs
from conftest import run, sha256, shared_slide
from fixtures.images import pattern
from fixtures.mrxs import MrxsSpec, write_mrxs
from fixtures.ndpi import NdpiSpec, write_ndpi
from fixtures.ometiff import write_ome_tiff
from fixtures.svs import SvsSpec, write_svs
from wsideid.images import jpeg_entropy as je

RECT = (300, 200, 500, 300)              # x, y, w, h in level-0 pixels


# ---- helpers ---------------------------------------------------------------------------------

def geojson(*polygons, path: Path) -> Path:
    """A QuPath-style FeatureCollection of these (exterior ring, holes...) polygons."""
    features = [{"type": "Feature", "id": f"annotation-{n}",
                 "geometry": {"type": "Polygon", "coordinates": [list(map(list, ring)) for ring in rings]},
                 "properties": {"objectType": "annotation", "name": "pen note"}}
                for n, rings in enumerate(polygons)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def rect_polygon(x, y, w, h):
    return [[(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)]]


def the_output(out: Path) -> Path:
    [slide] = [p for p in out.iterdir() if p.name not in ("wsideid-report.json", ".wsideid")
               and (not p.is_dir() or not (out / (p.name + ".mrxs")).exists())]
    return slide


def report(out: Path) -> dict:
    [slide] = json.loads((out / "wsideid-report.json").read_text())["slides"]
    return slide


def reference_mask(geom, ds: tuple[float, float], shape: tuple[int, int], grow: float = 0.0,
                   origin: tuple[int, int] = (0, 0)):
    """Pixels of a level of this downsample (of a window of it starting at `origin`) whose
    centre lies in the region grown by `grow` level pixels: shapely on the pixel centres,
    independently of the tool's rasteriser."""
    level = affinity.scale(geom, 1 / ds[0], 1 / ds[1], origin=(0, 0))
    level = affinity.translate(level, -origin[0], -origin[1])
    if grow:
        level = level.buffer(grow, join_style="mitre")
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = level.bounds
    c0, r0 = max(0, int(x0)), max(0, int(y0))
    c1, r1 = min(shape[1], int(np.ceil(x1)) + 1), min(shape[0], int(np.ceil(y1)) + 1)
    if c0 >= c1 or r0 >= r1:
        return mask
    yy, xx = np.mgrid[r0:r1, c0:c1]
    mask[r0:r1, c0:c1] = shapely.contains_xy(level, xx + 0.5, yy + 0.5)
    return mask


def erode(mask: np.ndarray, n: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(n):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        out = inner
    return out


def check_levels(before: list[np.ndarray], after: list[np.ndarray], downsamples, geom,
                 fill: int = 0, margin: int = 1, far: float = 25.0, tolerance: int = 0,
                 origins=None) -> None:
    """Inside the region (`margin` pixels from its edge) every pixel is the fill; farther than
    `far` pixels from it, every pixel is the input's (a touched 16 x 16 chroma block of a
    4:2:0 JPEG reaches 16 * sqrt(2) pixels out, its upsampling one more)."""
    assert len(before) == len(after)
    for a, b, ds, origin in zip(before, after, downsamples, origins or [(0, 0)] * len(before)):
        assert a.shape == b.shape
        inside = erode(reference_mask(geom, ds, a.shape[:2], origin=origin), margin)
        near = reference_mask(geom, ds, a.shape[:2], grow=far, origin=origin)
        assert inside.any()
        assert np.abs(b[inside].astype(int) - fill).max() <= tolerance, ds
        assert np.array_equal(a[~near], b[~near]), ds


def openslide_levels(path: Path) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    with openslide.OpenSlide(str(path)) as slide:
        base = slide.level_dimensions[0]
        levels = [np.asarray(slide.read_region((0, 0), n, size).convert("RGB"))
                  for n, size in enumerate(slide.level_dimensions)]
        ds = [(base[0] / w, base[1] / h) for w, h in slide.level_dimensions]
    return levels, ds


def openslide_windows(path: Path, window: tuple[int, int, int, int]):
    """The level-0 window (x0, y0, x1, y1) on every level: arrays, downsamples, origins."""
    levels, dss, origins = [], [], []
    with openslide.OpenSlide(str(path)) as slide:
        base = slide.level_dimensions[0]
        for n, (w, h) in enumerate(slide.level_dimensions):
            ds = (base[0] / w, base[1] / h)
            ox, oy = int(window[0] / ds[0]), int(window[1] / ds[1])
            size = (min(w, int(np.ceil(window[2] / ds[0]))) - ox,
                    min(h, int(np.ceil(window[3] / ds[1]))) - oy)
            at = (int(np.ceil(ox * slide.level_downsamples[n])),
                  int(np.ceil(oy * slide.level_downsamples[n])))
            levels.append(np.asarray(slide.read_region(at, n, size).convert("RGB")))
            dss.append(ds)
            origins.append((ox, oy))
    return levels, dss, origins


def tiff_runs(path: Path) -> dict[str, list[bytes]]:
    """Every IFD's stored pieces (SubIFDs too), by the tool's IFD labels."""
    from wsideid.containers.tiff.reader import TiffFile

    out = {}
    with TiffFile(path) as tiff:
        for root in tiff.ifds:
            for ifd in root.walk():
                regions = ifd.data_regions(tiff.byteorder)
                if regions is not None:
                    out[ifd.label] = [tiff.read(int(o), int(c)) for o, c in zip(regions[2], regions[3])]
    return out


def touched_tiles(geom, ds, tile: tuple[int, int], size: tuple[int, int]) -> set[int]:
    """Tiles (row-major index) of a level whose area the scaled region meets."""
    level = affinity.scale(geom, 1 / ds[0], 1 / ds[1], origin=(0, 0))
    across, down = -(-size[0] // tile[0]), -(-size[1] // tile[1])
    return {r * across + c for r in range(down) for c in range(across)
            if level.intersection(box(c * tile[0], r * tile[1], (c + 1) * tile[0],
                                      (r + 1) * tile[1])).area > 0}


# ---- SVS -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def svs_redacted(tmp_path_factory):
    """A generated SVS redacted (only) with a rectangle and a triangle with a hole."""
    tmp = tmp_path_factory.mktemp("svs")
    src = write_svs(tmp / "S26-REGION.svs")
    triangle = [[(900, 100), (1400, 300), (1000, 800), (900, 100)],
                [(1000, 300), (1150, 350), (1050, 450), (1000, 300)]]
    regions = geojson(rect_polygon(*RECT), triangle, path=tmp / "regions.geojson")
    out = tmp / "out"
    run("redact", src, "-o", out, "--regions", regions, check=0)
    geom = shapely.union_all([box(RECT[0], RECT[1], RECT[0] + RECT[2], RECT[1] + RECT[3]),
                              Polygon(triangle[0], [triangle[1]])])
    return src, out / src.name, geom, out


def test_svs_every_level_and_the_thumbnail_read_as_the_fill(svs_redacted):
    src, dst, geom, _ = svs_redacted
    before, ds = openslide_levels(src)
    after, _ = openslide_levels(dst)
    # 4:2:0 tiles: the region's outermost pixel may take a tint from the next chroma sample
    check_levels(before, after, ds, geom, margin=1)
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(dst)) as b:
        ta = np.asarray(a.associated_images["thumbnail"].convert("RGB"))
        tb = np.asarray(b.associated_images["thumbnail"].convert("RGB"))
    check_levels([ta], [tb], [(1536 / ta.shape[1], 1024 / ta.shape[0])], geom)


def test_svs_only_touched_tiles_change_and_in_them_only_touched_blocks(svs_redacted):
    src, dst, geom, _ = svs_redacted
    a, b = tiff_runs(src), tiff_runs(dst)
    with tifffile.TiffFile(src) as tf:
        pages = {f"IFD {i}": p for i, p in enumerate(tf.pages)}
        tables = tf.pages[0].jpegtables
        for label, page in pages.items():
            if label in ("IFD 3", "IFD 4"):      # label and macro: no geometry, kept as they are
                assert a[label] == b[label]
                continue
            changed = {i for i, (x, y) in enumerate(zip(a[label], b[label])) if x != y}
            ds = (1536 / page.imagewidth, 1024 / page.imagelength)
            tile = (page.tilewidth, page.tilelength) if page.is_tiled else (page.imagewidth, page.rowsperstrip)
            assert changed == touched_tiles(geom, ds, tile, (page.imagewidth, page.imagelength)), label
            assert changed
    # level 0: blocks the region does not touch keep their coefficients, touched ones are flat
    for index in sorted(changed_tiles := {i for i, (x, y) in enumerate(zip(a["IFD 0"], b["IFD 0"])) if x != y}):
        old, new = je.parse_jpeg(a["IFD 0"][index], tables), je.parse_jpeg(b["IFD 0"][index], tables)
        layout = je.block_layout(old)
        comp, by, bx = layout.blocks()
        ca, cb = _coefficients(a["IFD 0"][index], tables), _coefficients(b["IFD 0"][index], tables)
        col, row = index % 6, index // 6
        for k in range(len(comp)):
            sx, sy = layout.scale[comp[k]]
            x0, y0 = col * 256 + bx[k] * sx, row * 256 + by[k] * sy
            hit = geom.intersection(box(x0, y0, x0 + sx, y0 + sy)).area > 0
            if hit:
                assert not cb[k, 1:].any()
            else:
                assert np.array_equal(ca[k], cb[k])
        assert new.qtables[0].tolist() == old.qtables[0].tolist()
    assert changed_tiles


def _coefficients(stream: bytes, tables: bytes) -> np.ndarray:
    info = je.parse_jpeg(stream, tables)
    layout = je.block_layout(info)
    spans = je.interval_ends(stream, info.data_start, info.data_end)
    comp = layout.blocks()[0]
    per = info.restart_interval * layout.blocks_per_mcu if info.restart_interval else len(comp)
    return np.concatenate([je.decode_interval(stream[s:e], info, comp[n * per:(n + 1) * per])
                           for n, (s, e) in enumerate(spans)])


def test_redact_changes_nothing_else(svs_redacted):
    src, dst, _, out = svs_redacted
    assert dst.name == src.name
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(dst) as b:
        assert len(a.pages) == len(b.pages) == 5            # label and macro kept
        for pa, pb in zip(a.pages, b.pages):
            moved = {273, 279, 324, 325}
            ta = {t.code: t.value for t in pa.tags.values() if t.code not in moved}
            tb = {t.code: t.value for t in pb.tags.values() if t.code not in moved}
            assert ta == tb
    entry = report(out)
    assert entry["actions"].get("remove", 0) == 0 and entry["pseudonym"] is None
    assert json.loads((out / "wsideid-report.json").read_text())["options"]["deidentify"] is False
    assert [r["region"] for r in entry["regions"]] == [1, 2]
    levels = {r["image"]: r for r in entry["redacted"]}
    assert set(levels) == {"IFD 0", "IFD 1", "IFD 2"}
    assert levels["IFD 0"]["pieces_touched"][0] >= 1 and levels["IFD 1"]["role"] == "thumbnail"
    assert any("IFD 3 (label) is kept but not redacted" in w for w in entry["warnings"])


def test_deid_with_regions_is_verified_and_the_report_records_them(tmp_path):
    src = write_svs(tmp_path / "S26-PLANT-4711.svs", SvsSpec(bigtiff=True))
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, "--region", "300,200,500,300", "--region", "10,10,8,8",
               "--fill", "255", check=0)
    assert "warning" not in proc.stderr     # label and macro are dropped: nothing unpainted
    entry = report(out)
    assert entry["status"] == "ok" and [r["bounds"] for r in entry["regions"]] == [
        [300, 200, 800, 500], [10, 10, 18, 18]]
    assert {r["image"]: r["pieces_touched"] for r in entry["redacted"]}["IFD 0"] == [6, 1]
    after, _ = openslide_levels(the_output(out))
    assert (after[0][202:498, 302:798] == 255).all()
    proc = run("inspect", src, "--json", "--region", "300,200,500,300")
    doc = json.loads(proc.stdout)
    assert doc["regions"][0]["bounds"] == [300, 200, 800, 500]
    assert [r["pieces_rewritten"] for r in doc["redacted"]] == [6, 5, 2]


def _svs_with_text(path: Path, text: bool) -> Path:
    """An SVS whose tissue carries a line of handwriting-like text at (420, 330), in level 0
    and (by its downsampling) every level and the thumbnail."""
    def drawn(h, w, seed):
        img = pattern(h, w, seed)
        if text:
            canvas = Image.fromarray(img)
            draw = ImageDraw.Draw(canvas)
            for dx in range(3):          # thick strokes survive the 1/4 downsampling
                draw.text((420 + dx, 330), "PATIENT JANE ROE 1957", fill=(20, 20, 140))
                draw.text((420 + dx, 331), "PATIENT JANE ROE 1957", fill=(20, 20, 140))
            img = np.asarray(canvas)
        return img

    original = fixtures.svs.pattern
    fixtures.svs.pattern = drawn
    try:
        return write_svs(path, SvsSpec(plant=False))
    finally:
        fixtures.svs.pattern = original


def test_text_in_the_tissue_is_gone_at_every_level(tmp_path):
    with_text = _svs_with_text(tmp_path / "text.svs", True)
    without = _svs_with_text(tmp_path / "plain.svs", False)
    a, _ = openslide_levels(with_text)
    b, _ = openslide_levels(without)
    assert all(not np.array_equal(x, y) for x, y in zip(a, b))   # the text is on every level
    outs = []
    for src in (with_text, without):
        run("redact", src, "-o", tmp_path / src.stem, "--region", "410,320,150,30", check=0)
        outs.append(openslide_levels(tmp_path / src.stem / src.name)[0])
        with openslide.OpenSlide(str(tmp_path / src.stem / src.name)) as slide:
            outs[-1].append(np.asarray(slide.associated_images["thumbnail"].convert("RGB")))
    for x, y in zip(*outs):
        assert np.array_equal(x, y)     # nothing of the text is left anywhere


# ---- NDPI ----------------------------------------------------------------------------------

def _ndpi_strip(path: Path, label: str = "IFD 0") -> tuple[bytes, list[int]]:
    from wsideid.containers.tiff.reader import TiffFile

    with TiffFile(path) as tiff:
        ifd = next(i for i in tiff.ifds if i.label == label)
        _, _, offs, cnts = ifd.data_regions(tiff.byteorder)
        return tiff.read(int(offs[0]), int(cnts[0])), ifd.tags[65426].ints(tiff.byteorder).tolist()


@pytest.mark.parametrize("command", ["redact", "deid"])
def test_ndpi_only_touched_restart_intervals_change(tmp_path, command):
    src = write_ndpi(tmp_path / "NDPI-REF-HS26.ndpi", NdpiSpec(levels=3))
    out = tmp_path / "out"
    run(command, src, "-o", out, "--region", ",".join(map(str, RECT)), check=0)
    dst = the_output(out)
    before, ds = openslide_levels(src)
    after, _ = openslide_levels(dst)
    geom = box(RECT[0], RECT[1], RECT[0] + RECT[2], RECT[1] + RECT[3])
    check_levels(before, after, ds, geom, margin=0, far=9)   # 4:4:4, 8x8 MCUs
    for n, label in enumerate(("IFD 0", "IFD 1", "IFD 2")):
        old, old_starts = _ndpi_strip(src, label)
        new, new_starts = _ndpi_strip(dst, label)
        if command == "deid" and n == 0:        # the planted JPEG comment is gone from level 0
            shift = len(old) - len(new)
            old, old_starts = old[:2] + old[2 + shift:], [s - shift for s in old_starts]
        assert new_starts == old_starts and len(new) == len(old)   # patched in place
        bounds = old_starts + [len(old)]
        changed = [i for i in range(len(old_starts)) if old[bounds[i]:bounds[i + 1]] != new[bounds[i]:bounds[i + 1]]]
        scale = 2 ** n
        rows = range(RECT[1] // scale // 8, -(-(RECT[1] + RECT[3]) // scale) // 8 + 1)
        assert changed == [r for r in rows if r * 8 < -(-(RECT[1] + RECT[3]) // scale)]
    if command == "redact":
        assert report(out)["redacted"][0]["path"].startswith("JPEG restart intervals")


def test_ndpi_level_rebuilt_when_an_interval_grows_past_4gb(tmp_path, monkeypatch):
    """When a re-coded interval would not fit, the level is rebuilt and appended; here every
    offset is above 4 GB (sparse), so the new one needs its high bits too."""
    from wsideid import pipeline
    from wsideid.adapters import ndpi_regions
    from wsideid.containers.output import Target
    from wsideid.images.regions import from_rectangles
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy, Redaction

    src = write_ndpi(tmp_path / "big.ndpi", NdpiSpec(hole=4608 << 20))
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(ndpi_regions, "_patches", lambda *a, **k: None)
    region = from_rectangles([RECT])
    policy = Policy(redaction=Redaction(region, (region,), 0, 0))
    result = pipeline.run(Job((src,), "hamamatsu-ndpi"),
                          pipeline.Settings(policy, Keyring(b"k" * 32), Target(tmp_path / "out")))
    assert result.status == "ok", result.message
    from wsideid.containers.tiff.reader import TiffFile

    with TiffFile(result.output) as tiff:
        offsets = tiff.ifds[0].tags[273].ints(tiff.byteorder)
        assert offsets[0] > 4608 << 20
    before, ds = openslide_levels(src)
    after, _ = openslide_levels(result.output)
    check_levels(before, after, ds, box(300, 200, 800, 500), margin=0, far=9)


# ---- OME-TIFF and generic TIFF -------------------------------------------------------------

def tifffile_levels(path: Path) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        levels = [lvl.asarray() for lvl in series.levels]
    base = levels[0].shape
    return levels, [(base[1] / a.shape[1], base[0] / a.shape[0]) for a in levels]


def test_ome_subifd_pyramid_is_painted(tmp_path):
    src = write_ome_tiff(tmp_path / "S26-OMEPLANT-4711.ome.tif")
    regions = geojson([[(100, 500), (700, 420), (650, 700), (100, 500)]], path=tmp_path / "r.json")
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--regions", regions, check=0)
    before, ds = tifffile_levels(src)
    after, _ = tifffile_levels(the_output(out))
    assert len(before) == 3
    check_levels(before, after, ds, Polygon([(100, 500), (700, 420), (650, 700)]), margin=1)
    images = {r["image"] for r in report(out)["redacted"]}
    assert images == {"IFD 0", "IFD 0 SubIFD 0", "IFD 0 SubIFD 1"}


def _generic(path: Path) -> Path:
    """Level 0 in strips (LZW, horizontal predictor, a last strip shorter), then tiled levels
    at downsamples that are not whole numbers: Deflate, uncompressed, JPEG."""
    img = pattern(500, 700, 3)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, compression="lzw", predictor=True, rowsperstrip=37, photometric="rgb")
        tw.write(img[::3, ::3][:166, :233], tile=(64, 64), compression="zlib", photometric="rgb",
                 subfiletype=1)
        tw.write(np.ascontiguousarray(img[::6, ::6][:83, :116]), tile=(32, 32), photometric="rgb",
                 subfiletype=1)
        tw.write(np.ascontiguousarray(img[::2, ::2][:250, :350]), tile=(64, 64), compression="jpeg",
                 photometric="rgb", subfiletype=1)
    return path


def test_generic_tiff_lossless_codecs_exact_and_region_level(tmp_path):
    src = _generic(tmp_path / "generic.tif")
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--region", "101,77,203,150", "--fill", "200", check=0)
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(the_output(out)) as b:
        geom = box(101, 77, 304, 227)
        for pa, pb in zip(a.pages, b.pages):
            x, y = pa.asarray(), pb.asarray()
            ds = (700 / x.shape[1], 500 / x.shape[0])
            inside = reference_mask(geom, ds, x.shape[:2])
            lossless = pa.compression != 7
            near = reference_mask(geom, ds, x.shape[:2], grow=1 if lossless else 25)
            assert (y[erode(inside, 0 if lossless else 1)] == 200).all()
            assert np.array_equal(x[~near], y[~near])
            if lossless:     # outward: every pixel the region covers any part of
                level = affinity.scale(geom, 1 / ds[0], 1 / ds[1], origin=(0, 0))
                x0, y0, x1, y1 = level.bounds
                assert (y[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] == 200).all()
                outside = np.ones(x.shape[:2], bool)
                outside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = False
                assert np.array_equal(x[outside], y[outside])
    # the same region given on level 2 (levels are numbered by size, as OpenSlide does: the
    # 233 x 166 one, downsample 700/233 x 500/166): scaled up, outward
    proc = run("inspect", src, "--json", "--region", "17,13,5,7", "--region-level", "2")
    bounds = json.loads(proc.stdout)["regions"][0]["bounds"]
    fx, fy = 700 / 233, 500 / 166
    assert bounds[0] <= int(17 * fx) and bounds[1] <= int(13 * fy)
    assert bounds[2] >= np.ceil(22 * fx) and bounds[3] >= np.ceil(20 * fy)


# ---- tiles that grow: JPEG 2000, BigTIFF, big-endian, in place -----------------------------

def _in_process(src: Path, adapter: str, rect, out: Path | None, deidentify: bool = True):
    from wsideid import pipeline
    from wsideid.containers.output import Target
    from wsideid.images.regions import from_rectangles
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy, Redaction

    region = from_rectangles([rect])
    policy = Policy(redaction=Redaction(region, (region,), 0, 0), deidentify=deidentify)
    if out is not None:
        out.mkdir(exist_ok=True)
    result = pipeline.run(Job((src,), adapter), pipeline.Settings(policy, Keyring(b"k" * 32),
                                                                  Target(out)))
    assert result.status == "ok", result.message
    return result.output


@pytest.mark.parametrize("flags, in_place", [(dict(), False), (dict(bigtiff=True), False),
                                             (dict(byteorder=">"), False), (dict(), True)],
                         ids=["classic", "bigtiff", "big-endian", "in-place"])
def test_rewritten_tiles_that_grow_move_and_leave_nothing(tmp_path, monkeypatch, flags, in_place):
    """Painted tiles made longer (fill bytes before EOI, which decoders skip) are appended
    after the last live byte; their offsets point there; the old bytes are gone."""
    from wsideid.images import redact

    src = write_svs(tmp_path / "S26-GROW.svs", SvsSpec(plant=False, **flags))
    original = tiff_runs(src)
    before, ds = tifffile_levels(src)      # OpenSlide does not read big-endian SVS
    old_size = os.path.getsize(src)
    real = redact.redact_jpeg
    monkeypatch.setattr(redact, "redact_jpeg", lambda *a, **k: real(*a, **k)[:-2] + b"\xff" * 100_000 + b"\xff\xd9")
    work = shutil.copy(src, tmp_path / "work.svs") if in_place else src
    dst = _in_process(work, "aperio-svs", RECT, None if in_place else tmp_path / "out")
    after_runs = tiff_runs(dst)
    grown = [i for i, (a, b) in enumerate(zip(original["IFD 0"], after_runs["IFD 0"])) if len(b) > len(a)]
    assert grown == sorted(touched_tiles(box(300, 200, 800, 500), (1, 1), (256, 256), (1536, 1024)))
    data = dst.read_bytes()
    with tifffile.TiffFile(dst) as tf:
        offsets = tf.pages[0].dataoffsets
    for index in grown:
        assert data.find(original["IFD 0"][index]) < 0          # the old tile is gone
    assert min(offsets[i] for i in grown) >= max(offsets[i] for i in range(len(offsets)) if i not in grown)
    assert len(data) > old_size // 2
    after, _ = tifffile_levels(dst)
    check_levels(before, after, ds, box(300, 200, 800, 500), margin=1)


def test_real_jpeg2000_slide_tiles_grow(tmp_path):
    """Aperio 33005 tiles of mostly empty glass re-encode longer (OpenJPEG, matched quality):
    they move; in touched tiles the re-encode costs a little generation loss, nothing else
    changes."""
    src = shutil.copy(shared_slide("svs/tcga-cr-7395-01a-01-ts1.svs"), tmp_path / "tcga.svs")
    window = (400, 300, 2300, 1900)
    before, ds, origins = openslide_windows(src, window)
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--region", "1000,900,700,400", check=0)
    moved = report(out)["redacted"]
    assert moved[0]["path"].startswith("JPEG 2000")
    for dst in (the_output(out),):
        after, _, _ = openslide_windows(dst, window)
        # touched 256 x 256 tiles may change a little everywhere; beyond them nothing does
        check_levels(before, after, ds, box(1000, 900, 1700, 1300), margin=4, far=256 * 1.5,
                     tolerance=24, origins=origins)
        for a, b, f, o in zip(before, after, ds, origins):
            outside = ~reference_mask(box(1000, 900, 1700, 1300), f, a.shape[:2], grow=4, origin=o)
            assert np.abs(a[outside].astype(int) - b[outside]).mean() < 0.5


# ---- MIRAX ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [MrxsSpec(), MrxsSpec(image_format="PNG", divisions=2,
                                                       overlap=8, stitching=True)],
                         ids=["jpeg", "png-overlap"])
def test_mirax_every_zoom_level(tmp_path, spec):
    src = write_mrxs(tmp_path / "S26-MRXS.mrxs", spec)
    out = tmp_path / "out"
    # crosses camera photos (and their overlap) and image borders
    run("redact", src, "-o", out, "--region", "200,230,420,310", check=0)
    before, ds = openslide_levels(src)
    after, _ = openslide_levels(out / src.name)
    lossless = spec.image_format == "PNG"
    check_levels(before, after, ds, box(200, 230, 620, 540), margin=0 if lossless else 1,
                 far=2 if lossless else 25)
    changed = report(out)["redacted"]
    assert [r["pieces_rewritten"] for r in changed] == [r["pieces_touched"] for r in changed]


def test_mirax_image_that_grows_is_appended(tmp_path, monkeypatch):
    import imagecodecs

    from wsideid import pipeline
    from wsideid.containers.mirax.index import IndexFile
    from wsideid.containers.output import Target
    from wsideid.images import redact
    from wsideid.images.regions import from_rectangles
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy, Redaction

    src = write_mrxs(tmp_path / "S26-MRXS.mrxs", MrxsSpec(image_format="PNG"))
    (tmp_path / "out").mkdir()
    real = redact.redact_png
    monkeypatch.setattr(redact, "redact_png", lambda data, mask, fill: imagecodecs.png_encode(
        imagecodecs.png_decode(real(data, mask, fill)), level=0))       # stored, not deflated
    region = from_rectangles([(300, 200, 100, 100)])
    result = pipeline.run(Job((src,), "mirax"), pipeline.Settings(
        Policy(redaction=Redaction(region, (region,), 0, 0), deidentify=False),
        Keyring(b"k" * 32), Target(tmp_path / "out")))
    assert result.status == "ok", result.message
    out = result.output
    folder = out.with_suffix("")
    old_size = (src.with_suffix("") / "Data0000.dat").stat().st_size
    index = IndexFile.parse((folder / "Index.dat").read_bytes(), "5f3c2a1b9d8e4f70a1b2c3d4e5f60718", 5, 6)
    moved = [item for item in index.hier[0].items() if item[1] >= old_size]
    assert moved
    before, ds = openslide_levels(src)
    after, _ = openslide_levels(out)
    check_levels(before, after, ds, box(300, 200, 400, 300), margin=0, far=2)


# ---- DICOM ---------------------------------------------------------------------------------

def wsidicom_levels(files) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    from wsidicom import WsiDicom

    with WsiDicom.open([str(f) for f in files]) as slide:
        base = slide.levels[0].size
        levels = [np.asarray(slide.read_region((0, 0), lv.level, (lv.size.width, lv.size.height))
                             .convert("RGB")) for lv in slide.levels]
        ds = [(base.width / lv.size.width, base.height / lv.size.height) for lv in slide.levels]
    return levels, ds


def _copy_series(rel: str, tmp: Path) -> Path:
    folder = tmp / Path(rel).name
    shutil.copytree(shared_slide(rel), folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


@pytest.mark.parametrize("rel, rect, margin, far", [
    ("dicom/gcp-jpeg2000-volume", (300, 200, 500, 300), 0, 1),     # JPEG 2000 lossless frames
    ("dicom/openslide-boxes", (3, 4, 5, 6), 1, 9),                  # RGB JPEG + native thumbnail
    ("dicom/highdicom-sm", (3, 4, 25, 16), 0, 1),                   # native frames
])
def test_dicom_real_series(tmp_path, rel, rect, margin, far):
    src = _copy_series(rel, tmp_path)
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--region", ",".join(map(str, rect)), check=0)
    [folder] = [p for p in out.iterdir() if p.is_dir() and p.name != ".wsideid"]
    before, ds = wsidicom_levels(sorted(src.glob("*.dcm")))
    after, _ = wsidicom_levels(sorted(folder.glob("*.dcm")))
    x, y, w, h = rect
    check_levels(before, after, ds, box(x, y, x + w, y + h), margin=margin, far=far)
    roles = {r["role"] for r in report(out)["redacted"]}
    assert "level" in roles and ("thumbnail" in roles) == (rel.endswith("boxes"))
    # the frames that changed are exactly those the region meets
    import pydicom

    for a, b in zip(sorted(src.glob("*.dcm")), sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(a)
        if ds.ImageType[2] != "VOLUME":
            continue
        fa, fb = _frames(a), _frames(b)
        changed = {i for i, (x, y) in enumerate(zip(fa, fb)) if x != y}
        size = (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
        assert changed == touched_tiles(box(x, y, x + w, y + h), (1, 1),
                                        (int(ds.Columns), int(ds.Rows)), size)


def _frames(path: Path) -> list[bytes]:
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return [f.rstrip(b"\x00") for f in generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))]
    size = len(ds.PixelData) // int(ds.NumberOfFrames)
    return [ds.PixelData[i * size:(i + 1) * size] for i in range(int(ds.NumberOfFrames))]


def test_dicom_generated_pyramid_redacted_keeps_its_header(tmp_path):
    import pydicom

    svs = write_svs(tmp_path / "S26-PLANT-4711.svs", SvsSpec(plant=False))
    run("convert", svs, "--to", "dicom", "-o", tmp_path / "dicom", check=0)
    [series] = [p for p in (tmp_path / "dicom").iterdir() if p.is_dir()]
    out = tmp_path / "out"
    run("redact", series, "-o", out, "--region", ",".join(map(str, RECT)), check=0)
    before, ds = wsidicom_levels(sorted(series.glob("*.dcm")))
    [folder] = [p for p in out.iterdir() if p.is_dir() and p.name != ".wsideid"]
    assert folder.name == f"{series.name}-0000"
    after, _ = wsidicom_levels(sorted(folder.glob("*.dcm")))
    check_levels(before, after, ds, box(300, 200, 800, 500), margin=1, far=25)
    for f in series.glob("*.dcm"):
        a = pydicom.dcmread(f, stop_before_pixels=True)
        b = pydicom.dcmread(folder / f.name, stop_before_pixels=True)
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.PatientName == b.PatientName
        assert "ExtendedOffsetTable" not in b


# ---- real slides ---------------------------------------------------------------------------

@pytest.mark.parametrize("rel, rect, margin", [
    ("svs/CMU-1-Small-Region.svs", (700, 900, 640, 380), 1),
    ("ndpi/test3-DAPI-2-387.ndpi", (1500, 2000, 900, 700), 0),
    ("ometiff/OS-2-ndpi.ome.tif", (120, 60, 300, 200), 1),
])
def test_real_slides(tmp_path, rel, rect, margin):
    src = shutil.copy(shared_slide(rel), tmp_path / Path(rel).name)
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--region", ",".join(map(str, rect)), check=0)
    x, y, w, h = rect
    if rel.startswith("ometiff"):          # OpenSlide does not read this OME-TIFF
        before, ds = tifffile_levels(src)
        after, _ = tifffile_levels(the_output(out))
        origins = None
    else:
        window = (max(0, x - 300), max(0, y - 300), x + w + 300, y + h + 300)
        before, ds, origins = openslide_windows(src, window)
        after, _, _ = openslide_windows(the_output(out), window)
    check_levels(before, after, ds, box(x, y, x + w, y + h), margin=margin, far=25,
                 origins=origins)


# ---- bad input -----------------------------------------------------------------------------

BAD_GEOJSON = {
    "outside": (json.dumps({"type": "Polygon", "coordinates": rect_polygon(5000, 5000, 10, 10)}),
                "outside the image"),
    "empty": (json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": []}}),
              "empty polygon"),
    "self-intersecting": (json.dumps({"type": "Polygon", "coordinates": [
        [[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}), "not valid"),
    "malformed": ('{"type": "FeatureCollection", "features": [', "not valid JSON"),
    "a line": (json.dumps({"type": "LineString", "coordinates": [[0, 0], [9, 9]]}), "not supported"),
}


@pytest.fixture(scope="module")
def small_svs(tmp_path_factory):
    return write_svs(tmp_path_factory.mktemp("bad") / "S26-BAD.svs")


@pytest.mark.parametrize("case", sorted(BAD_GEOJSON) + ["level", "fill", "rectangle", "none"])
def test_bad_regions_are_one_line_exit_2_nothing_written(small_svs, tmp_path, case):
    out = tmp_path / "out"
    before = sha256(small_svs)
    if case in BAD_GEOJSON:
        text, expect = BAD_GEOJSON[case]
        (tmp_path / "r.json").write_text(text)
        args = ["deid", small_svs, "-o", out, "--regions", tmp_path / "r.json"]
    elif case == "level":
        args, expect = ["deid", small_svs, "-o", out, "--region", "1,1,5,5", "--region-level", "9"], \
            "--region-level 9: the slide has levels 0 to 1"
    elif case == "fill":
        args, expect = ["deid", small_svs, "-o", out, "--region", "1,1,5,5", "--fill", "300"], "--fill"
    elif case == "rectangle":
        args, expect = ["redact", small_svs, "-o", out, "--region", "1,1,0,5"], "positive"
    else:
        args, expect = ["redact", small_svs, "-o", out], "no region given"
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsideid: error:")]
    assert len(errors) == 1 and expect in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "pen note" not in proc.stderr
    assert sha256(small_svs) == before
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert left in ([], ["wsideid-report.json"]), left


def test_a_codec_without_a_redaction_path_fails_the_slide(tmp_path):
    src = tmp_path / "webp.tif"
    tifffile.imwrite(src, pattern(256, 256, 1), tile=(128, 128), compression="webp",
                     photometric="rgb")
    out = tmp_path / "out"
    proc = run("redact", src, "-o", out, "--region", "10,10,20,20")   # deid refuses webp sooner
    assert proc.returncode == 2
    assert "cannot redact: no redaction for compression webp" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["wsideid-report.json"]
