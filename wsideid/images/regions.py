"""Regions to redact: read, scale between pyramid levels, clip, rasterise per tile.

A region is a union of polygons (with holes) in pixel coordinates of one level; pixel (i, j)
is the unit square [i, i+1) x [j, j+1). The rule everywhere is *outward*: a pixel belongs to
the mask as soon as the region covers any positive area of its square, so scaling a region
down to a coarse level never lets a sliver of the original pixels escape. Touching only along
a pixel's border does not count, so `--region 10,10,5,5` masks exactly 5 x 5 pixels.

Input is GeoJSON as QuPath exports it (coordinates in level-0 pixels) or rectangles from the
command line. Error messages are one line and never quote the file's content.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

GEOJSON_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon",
                 "MultiPolygon", "GeometryCollection", "Feature", "FeatureCollection"}


class RegionError(ValueError):
    """A region that cannot be used; the message is one line and quotes no input."""


@dataclass(frozen=True)
class Regions:
    """A valid (Multi)Polygon in pixel coordinates of one level."""
    geometry: BaseGeometry

    @property
    def is_empty(self) -> bool:
        return self.geometry.is_empty

    def pixel_bounds(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the pixels the region touches, x1/y1 exclusive."""
        minx, miny, maxx, maxy = self.geometry.bounds
        return math.floor(minx), math.floor(miny), math.ceil(maxx), math.ceil(maxy)

    def on_level(self, downsample_x: float, downsample_y: float) -> Regions:
        """Level-0 regions in the pixels of a level with these downsample factors."""
        _check_factors(downsample_x, downsample_y)
        return Regions(_scale(self.geometry, 1.0 / downsample_x, 1.0 / downsample_y))

    def to_level0(self, downsample_x: float, downsample_y: float) -> Regions:
        """Regions given on a level (`--region-level N`) in level-0 pixels, rounded outward.

        Every level-N pixel the region touches is taken whole, scaled, and then every level-0
        pixel that scaled area touches is taken whole: no part of a touched pixel escapes.
        """
        _check_factors(downsample_x, downsample_y)
        scaled = _scale(_outward_pixels(self.geometry), downsample_x, downsample_y)
        return Regions(_outward_pixels(scaled))

    def check_inside(self, width: int, height: int) -> Regions:
        """Clip to the image; a region wholly outside it is an error."""
        clipped = _polygons_only(self.geometry.intersection(box(0, 0, width, height)))
        if clipped.is_empty or clipped.area == 0:
            raise RegionError(f"region lies outside the image ({width} x {height} pixels)")
        return Regions(clipped)


def _check_factors(dx: float, dy: float) -> None:
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        raise RegionError("downsample factors must be positive numbers")


def _scale(geom: BaseGeometry, fx: float, fy: float) -> BaseGeometry:
    return affinity.scale(geom, xfact=fx, yfact=fy, origin=(0, 0))


def _outward_pixels(geom: BaseGeometry) -> BaseGeometry:
    """The union of the pixel squares the geometry covers with positive area: the geometry
    itself plus the whole square of every pixel its boundary passes through."""
    minx, miny, maxx, maxy = geom.bounds
    if math.isclose(geom.area, (maxx - minx) * (maxy - miny), rel_tol=1e-12):  # a rectangle
        return box(math.floor(minx), math.floor(miny), math.ceil(maxx), math.ceil(maxy))
    rings = _rings(geom)
    ix, iy = _crossed_pixels(np.concatenate([np.stack([r[:-1], r[1:]], axis=1) for r in rings]))
    squares = shapely.box(ix, iy, ix + 1, iy + 1)
    return _polygons_only(shapely.union_all([geom, *squares]))


# ---- reading -------------------------------------------------------------------------------

def read_geojson(text: str) -> Regions:
    """Regions from GeoJSON: a FeatureCollection, a list of Features, a Feature or a geometry."""
    return union(read_geojson_parts(text))


def read_geojson_parts(text: str) -> list[Regions]:
    """Each geometry of a GeoJSON document (a feature, a polygon) as regions of its own."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise RegionError("regions file is not valid JSON") from None
    geometries = list(_geometries(doc))
    if not geometries:
        raise RegionError("regions file holds no polygon")
    return [Regions(_polygons_only(shapely.union_all(_polygons(geometry, n))))
            for n, geometry in enumerate(geometries, 1)]


def union(parts: Sequence[Regions]) -> Regions:
    return Regions(_polygons_only(shapely.union_all([p.geometry for p in parts])))


def from_rectangles(rects: Iterable[Sequence[float]]) -> Regions:
    """Regions from (x, y, w, h) rectangles, as `--region x,y,w,h` gives them."""
    boxes = []
    for n, rect in enumerate(rects, 1):
        if len(rect) != 4 or not all(_is_number(v) for v in rect):
            raise RegionError(f"region {n}: expected four numbers x,y,w,h")
        x, y, w, h = (float(v) for v in rect)
        if w <= 0 or h <= 0:
            raise RegionError(f"region {n}: width and height must be positive")
        boxes.append(box(x, y, x + w, y + h))
    if not boxes:
        raise RegionError("no region given")
    return Regions(_polygons_only(shapely.union_all(boxes)))


def _geometries(doc: Any) -> Iterable[Any]:
    items = doc if isinstance(doc, list) else [doc]
    for item in items:
        if not isinstance(item, dict):
            raise RegionError("regions file: expected GeoJSON objects")
        kind = item.get("type")
        if kind == "FeatureCollection":
            features = item.get("features")
            if not isinstance(features, list):
                raise RegionError("FeatureCollection without a list of features")
            yield from _geometries(features)
        elif kind == "Feature":
            geometry = item.get("geometry")
            if not isinstance(geometry, dict):
                raise RegionError("Feature without a geometry")
            yield geometry
        else:
            yield item


def _polygons(geometry: dict, n: int) -> list[Polygon]:
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "Polygon":
        return [_polygon(coords, n)]
    if kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise RegionError(f"region {n}: empty MultiPolygon")
        return [_polygon(part, n) for part in coords]
    if isinstance(kind, str) and kind in GEOJSON_TYPES:
        raise RegionError(f"region {n}: geometry type {kind} is not supported "
                          "(only Polygon and MultiPolygon)")
    raise RegionError(f"region {n}: unknown geometry type")


def _polygon(rings: Any, n: int) -> Polygon:
    if not isinstance(rings, list) or not rings:
        raise RegionError(f"region {n}: empty polygon")
    parsed = [_ring(ring, n) for ring in rings]
    polygon = Polygon(parsed[0], parsed[1:])
    if not polygon.is_valid:
        reason = explain_validity(polygon).split("[")[0].strip()
        raise RegionError(f"region {n}: polygon is not valid ({reason[:40]})")
    if polygon.area == 0:
        raise RegionError(f"region {n}: polygon has no area")
    return polygon


def _ring(ring: Any, n: int) -> list[tuple[float, float]]:
    if not isinstance(ring, list):
        raise RegionError(f"region {n}: a ring is not a list of points")
    points = []
    for point in ring:
        if (not isinstance(point, list) or len(point) < 2
                or not all(_is_number(v) for v in point[:2])):
            raise RegionError(f"region {n}: a point is not a pair of numbers")
        points.append((float(point[0]), float(point[1])))
    if len(set(points)) < 3:
        raise RegionError(f"region {n}: a ring has fewer than 3 distinct points")
    return points


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _polygons_only(geom: BaseGeometry) -> BaseGeometry:
    """Drop the points and lines an intersection or union can leave beside polygons."""
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in shapely.get_parts(geom) if isinstance(g, (Polygon, MultiPolygon))]
    return shapely.union_all(parts) if parts else MultiPolygon()


# ---- rasterising ---------------------------------------------------------------------------

def mask_for_tile(level_regions: Regions, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
    """Boolean (h, w) mask of the pixels of this tile the region touches, None if none."""
    geom = level_regions.geometry
    minx, miny, maxx, maxy = geom.bounds if not geom.is_empty else (0, 0, 0, 0)
    if geom.is_empty or maxx <= x0 or maxy <= y0 or minx >= x0 + w or miny >= y0 + h:
        return None
    local = shapely.clip_by_rect(geom, x0 - 1, y0 - 1, x0 + w + 1, y0 + h + 1)
    mask = _rasterise(local, x0, y0, w, h)
    return mask if mask.any() else None


def tiles_touched(level_regions: Regions, tile_w: int, tile_h: int,
                  grid_w: int, grid_h: int) -> list[tuple[int, int]]:
    """(col, row) of every tile whose pixels the region touches, row by row.

    Bounding boxes narrow the candidates; GEOS then asks whether the region's interior meets
    each tile's interior, which is exactly "some pixel of the tile is masked" under the
    outward rule.
    """
    geom = level_regions.geometry
    if geom.is_empty:
        return []
    minx, miny, maxx, maxy = geom.bounds
    c0, r0 = max(0, math.floor(minx / tile_w)), max(0, math.floor(miny / tile_h))
    c1, r1 = min(grid_w, math.ceil(maxx / tile_w)), min(grid_h, math.ceil(maxy / tile_h))
    if c0 >= c1 or r0 >= r1:
        return []
    rows, cols = np.mgrid[r0:r1, c0:c1]
    rows, cols = rows.ravel(), cols.ravel()
    tiles = shapely.box(cols * tile_w, rows * tile_h, (cols + 1) * tile_w, (rows + 1) * tile_h)
    shapely.prepare(geom)
    hit = shapely.relate_pattern(geom, tiles, "T********")
    return [(int(c), int(r)) for c, r in zip(cols[hit], rows[hit])]


def _rings(geom: BaseGeometry) -> list[np.ndarray]:
    rings = []
    for poly in shapely.get_parts(geom):
        if isinstance(poly, Polygon) and not poly.is_empty:
            rings.append(np.asarray(poly.exterior.coords))
            rings.extend(np.asarray(r.coords) for r in poly.interiors)
    return rings


def _rasterise(geom: BaseGeometry, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Outward mask: pixel centres inside (even-odd scanlines) plus every pixel whose open
    square a boundary edge passes through; together exactly the pixels of positive overlap."""
    mask = np.zeros((h, w), bool)
    rings = _rings(geom)
    if not rings:
        return mask
    edges = np.concatenate([np.stack([r[:-1], r[1:]], axis=1) for r in rings])  # (E, 2, 2)
    edges = edges - np.array([x0, y0], float)
    _fill_centres(mask, edges)
    _mark_crossed(mask, edges)
    return mask


def _fill_centres(mask: np.ndarray, edges: np.ndarray) -> None:
    h, w = mask.shape
    (ax, ay), (bx, by) = edges[:, 0].T, edges[:, 1].T
    keep = ay != by
    ax, ay, bx, by = ax[keep], ay[keep], bx[keep], by[keep]
    lo, hi = np.minimum(ay, by), np.maximum(ay, by)
    yc = np.arange(h) + 0.5
    # Half-open rule lo <= y < hi counts a vertex on a scanline once.
    hit = (lo[None, :] <= yc[:, None]) & (yc[:, None] < hi[None, :])
    row, e = np.nonzero(hit)
    if row.size == 0:
        return
    xc = ax[e] + (yc[row] - ay[e]) * (bx[e] - ax[e]) / (by[e] - ay[e])
    first = np.clip(np.ceil(xc - 0.5), 0, w).astype(np.int64)  # first centre right of it
    toggles = np.zeros((h, w + 1), np.int32)
    np.add.at(toggles, (row, first), 1)
    mask |= (np.cumsum(toggles, axis=1)[:, :w] % 2).astype(bool)


def _mark_crossed(mask: np.ndarray, edges: np.ndarray) -> None:
    h, w = mask.shape
    ix, iy = _crossed_pixels(edges, (w, h))
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    mask[iy[ok], ix[ok]] = True


def _crossed_pixels(edges: np.ndarray, window: tuple[int, int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose open square some edge passes through: cut each edge at every grid line
    it crosses; the midpoint of each piece names the pixel that piece runs through."""
    xs, ys = [], []
    for (ax, ay), (bx, by) in edges:
        if window is not None and (max(ax, bx) < 0 or max(ay, by) < 0
                                   or min(ax, bx) > window[0] or min(ay, by) > window[1]):
            continue
        ts = [0.0, 1.0]
        for a, b in ((ax, bx), (ay, by)):
            if a != b:
                lines = np.arange(math.ceil(min(a, b)), math.floor(max(a, b)) + 1)
                ts.extend(((lines - a) / (b - a)).tolist())
        t = np.unique(np.clip(ts, 0.0, 1.0))
        mid = (t[:-1] + t[1:]) / 2
        mx, my = ax + mid * (bx - ax), ay + mid * (by - ay)
        # A piece lying on a grid line runs along pixel borders and enters no pixel; so does,
        # in effect, a sliver that rounding leaves between two crossings of one lattice
        # point (an edge through a pixel corner, moved by clipping).
        length = (t[1:] - t[:-1]) * math.hypot(bx - ax, by - ay)
        inside = (mx != np.floor(mx)) & (my != np.floor(my)) & (length > 1e-6)
        xs.append(np.floor(mx[inside]).astype(np.int64))
        ys.append(np.floor(my[inside]).astype(np.int64))
    if not xs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)
