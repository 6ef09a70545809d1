"""Verification of painted regions: every rewritten piece decodes and reads as the fill where
the region covers it, and the reader users open slides with (OpenSlide; wsidicom for DICOM)
shows the fill inside the region on every level and the thumbnail.

Pixels right at the region's edge are left out of the check where the codec mixes them with
their neighbours (JPEG chroma upsampling, the JPEG 2000 wavelet): a margin of 2 (JPEG) or 4
(JPEG 2000) pixels inside the mask; lossless codecs are checked to the edge, exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..containers.output import Written
from ..model import Plan, ReplaceRun

MAX_PIECES = 256        # rewritten pieces decoded per image
READER_POINTS = 12      # pixels read through the reader per image
MARGIN = {"jpeg": 2, "ndpi": 2, "jpeg2k": 4}


def verify(adapter, plan: Plan, written: Written) -> list[str]:
    problems = _check_pieces(plan)
    if problems:
        return problems
    if adapter.container == "dicom":
        return _check_wsidicom(plan, written.paths)
    return _check_openslide(plan, written.paths[0])


def _erode(mask: np.ndarray, margin: int) -> np.ndarray:
    if margin <= 0:
        return mask
    out = mask.copy()
    for _ in range(margin):
        inner = out.copy()
        inner[1:, :] &= out[:-1, :]
        inner[:-1, :] &= out[1:, :]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        inner[0, :] = inner[-1, :] = False
        inner[:, 0] = inner[:, -1] = False
        out = inner
    return out


def _check_pieces(plan: Plan) -> list[str]:
    problems = []
    by_image = {}
    for edit in plan.edits:
        if isinstance(edit, ReplaceRun):
            by_image.setdefault(edit.image, {})[edit.run] = edit.data
    for redaction in plan.redactions():
        info = redaction.regions
        decode, masks = info.get("_decode"), info.get("_masks") or {}
        if decode is None:
            continue
        codec = info["path"].split(":")[0].lower()
        margin = MARGIN.get(_codec(info), 0)
        expect = np.array(info["_expect"])
        for run in sorted(masks)[:MAX_PIECES]:
            data = by_image.get(redaction.image, {}).get(run)
            if data is None:
                problems.append(f"{redaction.image}: piece {run} was to be redacted but is not rewritten")
                continue
            try:
                image = decode(data)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a failure
                return [f"{redaction.image}: redacted piece {run} does not decode ({exc})"]
            mask = masks[run]
            h, w = min(mask.shape[0], image.shape[0]), min(mask.shape[1], image.shape[1])
            inner = _erode(mask, margin)[:h, :w]
            values = image[:h, :w][inner].astype(np.int64)
            if values.size and np.abs(values - expect[:values.shape[1]]).max() > info["_tolerance"]:
                problems.append(f"{redaction.image}: redacted piece {run} does not read as the "
                                f"fill inside the region ({codec})")
                break
    return problems


def _codec(info: dict) -> str:
    path = info["path"].lower()
    if path.startswith("jpeg restart"):
        return "ndpi"
    if path.startswith("jpeg 2000"):
        return "jpeg2k"
    if path.startswith("jpeg"):
        return "jpeg"
    return "lossless"


def _sample_points(info: dict, count: int) -> list[tuple[int, int]]:
    """Pixels (x, y) of the image well inside the region (3 pixels from its edge)."""
    import shapely

    geom = info["_regions"].geometry.buffer(-3, join_style="mitre")
    if geom.is_empty:
        return []
    rng = np.random.default_rng(12)
    points: list[tuple[int, int]] = []
    x0, y0, x1, y1 = geom.bounds
    rep = geom.representative_point()
    points.append((int(rep.x), int(rep.y)))
    shapely.prepare(geom)
    for _ in range(count * 20):
        if len(points) >= count:
            break
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if geom.contains(shapely.Point(x, y)):
            points.append((int(x), int(y)))
    return points


def _reader_tolerance(info: dict) -> int:
    return max(info["_tolerance"], 0) + (2 if _codec(info) != "lossless" else 0)


def _check_openslide(plan: Plan, path: Path) -> list[str]:
    import openslide

    problems = []
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError:
        return []   # the reader check of the container says whether it must open
    with slide:
        dims = list(slide.level_dimensions)
        for redaction in plan.redactions():
            info = redaction.regions
            fill = info["fill"]
            size = tuple(info["_size"])
            points = _sample_points(info, READER_POINTS)
            tolerance = _reader_tolerance(info)
            if info["role"] == "thumbnail":
                if "thumbnail" not in slide.associated_images:
                    continue
                image = np.asarray(slide.associated_images["thumbnail"].convert("RGB"))
                if image.shape[1::-1] != size:
                    continue
                got = [image[y, x] for x, y in points]
            elif size in dims:
                level = dims.index(size)
                ds = slide.level_downsamples[level]
                got = [np.asarray(slide.read_region((int((x + 0.5) * ds), int((y + 0.5) * ds)),
                                                    level, (1, 1)).convert("RGB"))[0, 0]
                       for x, y in points]
            else:
                continue
            bad = [g for g in got if np.abs(np.asarray(g, np.int64) - fill).max() > tolerance]
            if bad:
                problems.append(f"OpenSlide shows {redaction.image} ({info['role']}) unpainted "
                                f"inside the region at {len(bad)} of {len(got)} pixels")
    return problems


def _check_wsidicom(plan: Plan, paths) -> list[str]:
    from wsidicom import WsiDicom

    problems = []
    try:
        slide = WsiDicom.open([str(p) for p in paths])
    except Exception as exc:  # noqa: BLE001 - wsidicom raises many types
        return [f"wsidicom cannot open the output: {exc}"]
    try:
        levels = {(lv.size.width, lv.size.height): lv for lv in slide.levels}
        for redaction in plan.redactions():
            info: dict = redaction.regions
            size = tuple(info["_size"])
            if info["role"] != "level" or size not in levels:
                continue
            level = levels[size]
            tolerance = _reader_tolerance(info)
            bad = 0
            points = _sample_points(info, READER_POINTS)
            for x, y in points:
                pixel = np.asarray(slide.read_region((x, y), level.level, (1, 1)).convert("RGB"))
                if np.abs(pixel[0, 0].astype(np.int64) - info["fill"]).max() > tolerance:
                    bad += 1
            if bad:
                problems.append(f"wsidicom shows {redaction.image} unpainted inside the region "
                                f"at {bad} of {len(points)} pixels")
    finally:
        slide.close()
    return problems

