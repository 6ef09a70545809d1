"""What the reader users open slides with (OpenSlide) says about a slide."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReaderView:
    vendor: str | None
    level_dimensions: tuple[tuple[int, int], ...]
    mpp_x: str | None
    mpp_y: str | None
    objective_power: str | None
    associated: frozenset[str]


def openslide_view(path: Path) -> ReaderView | None:
    """None when OpenSlide cannot open the file."""
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError:
        return None
    try:
        props = slide.properties
        return ReaderView(props.get("openslide.vendor"), tuple(slide.level_dimensions),
                          props.get("openslide.mpp-x"), props.get("openslide.mpp-y"),
                          props.get("openslide.objective-power"),
                          frozenset(slide.associated_images))
    finally:
        slide.close()
