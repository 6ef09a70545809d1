"""The label, overview and thumbnail of a written slide, as its users' reader shows them:
every barcode decoded again, independently of what planning found.

- a replaced label decodes to the pseudonym, and to nothing else;
- a redacted overview decodes to nothing, and each blanked area is one uniform colour;
- any other kept label, overview or thumbnail decodes to nothing.

Pictures come from OpenSlide's associated images (SVS, NDPI, MIRAX: `label`, `macro`,
`thumbnail`), from wsidicom for DICOM (`read_label`, `read_overview`), and for what those
readers do not show (an OME-TIFF's label and macro Images, MIRAX's whole-slide overview, a
DICOM thumbnail) from the output read back by the format's own adapter (tifffile for TIFF).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..containers.output import Written
from ..model import Job, Naming, Plan, ReplaceImage

CHECKED = ("label", "macro", "overview", "thumbnail")
OPENSLIDE_NAMES = {"label": "label", "macro": "macro", "thumbnail": "thumbnail"}
UNIFORM_MARGIN = 4       # pixels inside a blanked box's edge left out (chroma upsampling)
UNIFORM_TOLERANCE = 6    # grey levels a blanked area may vary (JPEG rounding)


@dataclass
class Expected:
    """What one kept associated image must show: the pseudonym (a replaced label), or no
    barcode, with `area` (a label area's regions: boxes, size) uniform."""
    replaced: bool = False
    area: dict | None = None


def verify(adapter: Any, plan: Plan, written: Written, naming: Naming) -> list[str]:
    replaced = {e.image for e in plan.edits if isinstance(e, ReplaceImage)}
    areas = {e.image: e.regions for e in plan.label_areas()}
    wanted = {img.role: Expected(img.index in replaced, areas.get(img.index))
              for img in plan.images if img.role in CHECKED and img.action != "drop"}
    if not wanted:
        return []
    return check(reader_pictures(adapter, written.paths, set(wanted)), wanted, naming.pseudonym)


def check(pictures: dict[str, np.ndarray], wanted: dict[str, Expected],
          pseudonym: str) -> list[str]:
    """What is wrong with the pictures (by role) against what each must show."""
    from ..images.barcodes import decode_all

    problems = []
    for role, expected in wanted.items():
        pixels = pictures.get(role)
        if pixels is None:
            problems.append(f"the {role} image is kept but its reader does not show it")
            continue
        values = sorted({code.value for code in decode_all(pixels)})
        if expected.replaced:
            if pseudonym not in values:
                problems.append(f"the new {role} image does not decode to the pseudonym")
            if set(values) - {pseudonym}:
                problems.append(f"the new {role} image decodes to a value other than the "
                                "pseudonym")
            continue
        if values:
            problems.append(f"a barcode still decodes on the kept {role} image")
        if expected.area is not None:
            problems += uniform_areas(pixels, expected.area, role)
    return problems


def uniform_areas(pixels: np.ndarray, area: dict, role: str) -> list[str]:
    """Every blanked box reads as one colour (inside a margin where codecs blend edges)."""
    a = np.asarray(pixels)
    width, height = area["size"]
    if a.shape[1] != width or a.shape[0] != height:
        return [f"the {role} image is {a.shape[1]}x{a.shape[0]}, not the {width}x{height} "
                "that was blanked"]
    for x0, y0, x1, y1 in area["boxes"]:
        m = min(UNIFORM_MARGIN, (x1 - x0) // 4, (y1 - y0) // 4)
        inside = a[y0 + m:y1 - m, x0 + m:x1 - m].reshape(-1, a.shape[2] if a.ndim == 3 else 1)
        if inside.size and int((inside.max(axis=0).astype(int) - inside.min(axis=0)).max()) \
                > UNIFORM_TOLERANCE:
            return [f"the blanked label area of the {role} image is not uniform"]
    return []


def reader_pictures(adapter: Any, paths, roles: set[str]) -> dict[str, np.ndarray]:
    """The pictures of `roles` as the output's reader shows them (see the module's text)."""
    pictures: dict[str, np.ndarray] = {}
    if adapter.container == "dicom":
        pictures.update(_wsidicom(paths, roles))
    else:
        pictures.update(_openslide(paths[0], roles))
    missing = roles - set(pictures)
    if missing:
        pictures.update(_adapter(adapter, paths, missing))
    return pictures


def _rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _openslide(path: Path, roles: set[str]) -> dict[str, np.ndarray]:
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError:
        return {}
    with slide:
        shown = slide.associated_images
        return {role: _rgb(shown[name]) for role, name in OPENSLIDE_NAMES.items()
                if role in roles and name in shown}


def _wsidicom(paths, roles: set[str]) -> dict[str, np.ndarray]:
    from wsidicom import WsiDicom

    try:
        slide = WsiDicom.open([str(p) for p in paths])
    except Exception:  # noqa: BLE001 - without levels wsidicom opens nothing; the adapter reads
        return {}
    out = {}
    try:
        for role, read in (("label", slide.read_label), ("overview", slide.read_overview)):
            if role in roles:
                try:
                    out[role] = _rgb(read())
                except Exception:  # noqa: BLE001 - not there: reported by the caller
                    pass
    finally:
        slide.close()
    return out


def _adapter(adapter: Any, paths, roles: set[str]) -> dict[str, np.ndarray]:
    try:
        slide = adapter.read(Job(tuple(paths), adapter.name))
    except Exception:  # noqa: BLE001 - the container's own checks say why
        return {}
    try:
        out = {}
        for image in adapter.images(slide):
            if image.role in roles and image.role not in out:
                pixels = adapter.pixels(slide, image)
                if pixels is not None:
                    out[image.role] = pixels
        return out
    finally:
        slide.close()
