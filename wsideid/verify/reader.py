"""What the reader users open slides with (OpenSlide) says about a slide, before and after."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class ReaderView:
    vendor: str | None
    level_dimensions: tuple[tuple[int, int], ...]
    mpp_x: str | None
    mpp_y: str | None
    objective_power: str | None
    associated: frozenset[str]
    decode_error: str | None = None   # what decoding it as check_reader does raised (input)


def openslide_view(path: Path, decode: bool = False) -> ReaderView | None:
    """None when OpenSlide cannot open the file. With `decode`, the view also says whether
    what verification decodes of an output decodes here (an input that does not is the
    input's problem, not a failed de-identification)."""
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError:
        return None
    try:
        props = slide.properties
        view = ReaderView(props.get("openslide.vendor"), tuple(slide.level_dimensions),
                          props.get("openslide.mpp-x"), props.get("openslide.mpp-y"),
                          props.get("openslide.objective-power"),
                          frozenset(slide.associated_images))
    finally:
        slide.close()
    if decode:
        try:
            _decode_corners(path, view, associated=False)   # images may be dropped anyway
        except Exception as exc:  # noqa: BLE001 - OpenSlide raises several types
            view = replace(view, decode_error=str(exc) or type(exc).__name__)
    return view


def check_reader(out_path: Path, dropped: set[str], before: ReaderView | None,
                 exact: bool = False, not_levels: set[tuple[int, int]] = frozenset()
                 ) -> list[str]:
    """OpenSlide must show the output as it showed the input: vendor, levels (but those of a
    size in `not_levels`, images dropped for not being levels), MPP, objective power, every
    level and associated image decodable, and none of the `dropped` associated images (with
    `exact`, every other one it showed before must still be there)."""
    if before is None:
        return []
    if not_levels:
        before = replace(before, level_dimensions=tuple(
            d for d in before.level_dimensions if tuple(d) not in not_levels))
    after = openslide_view(out_path)
    if after is None:
        return ["OpenSlide can no longer open the slide"]
    problems = []
    for name in ("vendor", "level_dimensions", "mpp_x", "mpp_y", "objective_power"):
        if getattr(before, name) != getattr(after, name):
            problems.append(f"OpenSlide {name} changed: {getattr(before, name)} -> {getattr(after, name)}")
    try:
        _decode_corners(out_path, after)
    except Exception as exc:  # noqa: BLE001 - OpenSlide raises several types
        problems.append(f"OpenSlide cannot decode the output: {exc}")
    left = sorted(dropped & after.associated)
    if left:
        problems.append(f"OpenSlide still shows dropped images: {', '.join(left)}")
    missing = sorted((before.associated - dropped) - after.associated) if exact else []
    if missing:
        problems.append(f"OpenSlide no longer shows kept images: {', '.join(missing)}")
    return problems


def _decode_corners(path: Path, view: ReaderView, associated: bool = True) -> None:
    """Decode a region of every level and every associated image, as a user would."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        for level, (w, h) in enumerate(view.level_dimensions):
            slide.read_region((0, 0), level, (min(w, 512), min(h, 512)))
        for name in view.associated if associated else ():
            slide.associated_images[name]
