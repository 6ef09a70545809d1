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
