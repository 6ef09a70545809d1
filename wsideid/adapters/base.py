"""What every format adapter is: detect, read, name, plan, and its own checks of an output.

An adapter is a stateless description of a format; what it reads of one slide lives in the
slide object it returns, what it decides lives in the plan. Each adapter module ends with
`ADAPTER = ...`, which the registry (adapters/__init__.py) finds by itself: adding a format is
one module plus one catalog.
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import SlideError
from ..keyring import Keyring
from ..model import Image, Job, Naming, Plan
from ..policy import Policy

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class Probe:
    """One candidate file, looked at once for every adapter's detect: its first bytes and,
    for TIFF files, the parsed structure."""

    HEAD = 132 + 4   # enough for the DICOM preamble and "DICM"

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as fh:
                self.head = fh.read(self.HEAD)
        except OSError:
            self.head = b""

    @property
    def is_tiff(self) -> bool:
        return self.head[:4] in TIFF_MAGIC

    @cached_property
    def tiff(self):
        """The parsed TIFF structure, or None when the file is not a readable TIFF."""
        from ..containers.tiff.reader import TiffFile

        if not self.is_tiff:
            return None
        try:
            tiff = TiffFile(self.path)
        except SlideError:
            return None
        tiff.close()
        return tiff


class Adapter:
    """A format: the registry asks `detect`, the pipeline the rest."""

    name = "?"              # registry name
    format_name = ""        # the format as plans and reports name it (default: the name)
    order = 500             # detection order: lower first (generic formats last)
    container = "?"         # tiff | mirax | dicom
    extension = ""
    multi_file = False      # one slide spread over several given files (DICOM series)
    in_place = True         # supports --in-place
    settled: tuple[str, ...] = ("keep",)   # actions a re-plan of a released output may show
    tiles_copyable = True   # its tiles can become DICOM frames unchanged (conversion)
    # said when --label keep or replace finds no label image (a format that has none)
    no_label = "the slide has no label image"

    def __init__(self) -> None:
        if not self.format_name:
            self.format_name = self.name

    def detect(self, probe: Probe) -> bool:
        raise NotImplementedError

    def group_key(self, path: Path) -> str:
        """For multi-file formats: which slide a file belongs to."""
        raise NotImplementedError

    def read(self, job: Job) -> Any:
        raise NotImplementedError

    def fingerprint(self, slide: Any) -> bytes:
        """The slide's content, from which its pseudonym and identifiers are derived."""
        raise NotImplementedError

    def naming(self, slide: Any, keyring: Keyring) -> Naming:
        raise NotImplementedError

    def stored_naming(self, slide: Any) -> Naming:
        """Names of an output that keeps the slide as stored (`redact`): the input's own."""
        return Naming(slide.path.name.split(".")[0], slide.path.name)

    def images(self, slide: Any) -> list[Image]:
        """The slide's images with their roles, geometry and stored pieces, before planning."""
        raise NotImplementedError

    def stored_levels(self, slide: Any) -> list[Image]:
        """Every tiled pyramid image as stored (what a converter can copy tile by tile)."""
        return []

    def writer(self, slide: Any, naming: Naming, target: Any) -> Any:
        """What writes the planned slide to `target` (containers.output.Target): an object
        with `finish(plan) -> Written`, `abort()` and `screens` (True: the writer, not the
        plan, looks inside the image data, after copying it). Created before planning, so
        that bulk copies can start while the slide is planned."""
        raise NotImplementedError

    def plan(self, slide: Any, policy: Policy, naming: Naming, screen: bool = True,
             new_images: list = ()) -> Plan:
        """Every field and image of the slide with its action, the edits, and what the
        container writes. `screen=False` skips looking inside image data for text segments
        (verification compares kept image data with the screened input instead).
        `new_images` (ReplaceImage, RedactImage) become the images' new stored pieces."""
        raise NotImplementedError

    def reader_path(self, slide: Any) -> Path | None:
        """The file OpenSlide opens to show the slide (compared before and after), or None
        when the container's verification looks at the reader itself."""
        return slide.path

    def pixels(self, slide: Any, image: Image) -> Any:
        """An associated image's pixels (label, overview, thumbnail) as a numpy array, or None
        when they cannot be decoded here."""
        return None

    def smallest_level(self, slide: Any) -> Any:
        """The slide's smallest pyramid level decoded (numpy array), the picture a thumbnail
        must resemble, or None when it cannot be decoded here. By default OpenSlide reads it
        from `reader_path`."""
        path = self.reader_path(slide)
        return None if path is None else openslide_smallest_level(path)

    def label_values(self, slide: Any) -> list[str]:
        """Identifiers the format's label metadata holds (a barcode, the label's text): removed
        wherever else they appear."""
        return []

    def label_boxes(self, slide: Any, image: Image, pixels: Any) -> list[tuple[int, int, int, int]]:
        """Where the format's metadata says the label lies in an overview (pixel boxes)."""
        return []

    def checks(self, source: Any, out: Any, plan: Plan, out_plan: Plan) -> list[str]:
        """Format-specific checks of a written output (the shared ones run anyway)."""
        return []


def is_regular_file(path: Path) -> bool:
    try:
        return os.path.isfile(path)
    except OSError:
        return False


def openslide_smallest_level(path: Any) -> Any:
    """OpenSlide's smallest level of the slide at `path` as RGB, or None (OpenSlide cannot open
    it, or the level is too large to decode for a comparison)."""
    from ..images.likeness import MAX_REFERENCE_PIXELS

    try:
        import numpy as np
        import openslide

        with openslide.OpenSlide(str(path)) as osr:
            level = osr.level_count - 1
            w, h = osr.level_dimensions[level]
            if w * h > MAX_REFERENCE_PIXELS:
                return None
            return np.asarray(osr.read_region((0, 0), level, (w, h)).convert("RGB"))
    except Exception:  # noqa: BLE001 - any reader failure: no picture, the caller decides
        return None


def refuse_shared_bytes(images: list) -> None:
    """Refuse a slide in which an image to be kept stores its pieces in bytes that belong to an
    image that is dropped, replaced or redacted: those bytes are zeroed or rewritten, and a
    kept tile over them would carry the other image (a label, a macro) into the output."""
    import numpy as np

    kept = [img for img in images if img.action == "keep" and img.runs is not None]
    others = [img for img in images if img.action != "keep" and img.runs is not None]
    for other in others:
        for img in kept:
            for file in np.unique(other.runs.files):
                a = other.runs.offsets[other.runs.files == file]
                b = a + other.runs.counts[other.runs.files == file]
                mine = (img.runs.files == file) & (img.runs.counts > 0)
                if not mine.any():
                    continue
                starts = np.sort(img.runs.offsets[mine])
                ends = np.sort(img.runs.offsets[mine] + img.runs.counts[mine])
                # kept pieces starting before b minus those ending at or before a: overlaps
                over = (np.searchsorted(starts, b, side="left")
                        - np.searchsorted(ends, a, side="right"))
                if (over[(b > a)] > 0).any():
                    raise SlideError(f"{img.index}: its image data lies in the bytes of "
                                     f"{other.index} ({other.role}, which is not kept as it is)")
