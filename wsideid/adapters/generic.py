"""Generic TIFF: a TIFF no vendor adapter claims.

Only the standard-tag treatment applies (formats/tiff-tags.toml); the ImageDescription, whose
meaning is unknown, is removed; private tags are removed. Tiled IFDs are pyramid levels
(OpenSlide's generic-tiff reader takes every tiled directory as a level, whatever its
NewSubfileType); a stripped image is a level only when the file has no tiled one and it comes
first. An image whose description calls it a label, barcode, macro or overview has that role
whatever its position (Ventana BIF files put a stripped label in IFD 0). Several full-resolution
images (the channels of a multi-channel fluorescence TIFF such as a QPTIFF, or planes) are not
a pyramid this reader can keep whole: such a file is refused rather than released with one.
"""
from __future__ import annotations

import re

from ..containers.tiff.reader import Ifd, TiffFile
from ..errors import SlideError
from .base import Probe
from .tiff import TiffAdapter, TiffSlide

WORD = re.compile(r"[a-z]+")


class GenericTiffAdapter(TiffAdapter):
    name = "generic-tiff"
    order = 1000          # last: any TIFF is one
    extension = ".tif"

    def detect(self, probe: Probe) -> bool:
        # every file that starts like a TIFF, readable or not: reading it says what is wrong
        return probe.is_tiff

    def claims(self, tiff: TiffFile) -> bool:
        return True

    def classify(self, slide: TiffSlide) -> list[str]:
        ifds = slide.tiff.ifds
        any_tiled = any(322 in ifd.tags for ifd in ifds)
        roles = []
        for i, ifd in enumerate(ifds):
            words = set(WORD.findall((ifd.text(270) or "").lower()))
            if words & {"label", "barcode"}:
                roles.append("label")
            elif words & {"macro", "overview"}:
                roles.append("macro")
            elif 322 in ifd.tags or (i == 0 and not any_tiled):
                roles.append("level")
            else:
                roles.append("unknown")
        self._refuse_several_full_resolution_images(slide, roles)
        return roles

    @staticmethod
    def _refuse_several_full_resolution_images(slide: TiffSlide, roles: list[str]) -> None:
        bo = slide.bo
        levels = [ifd for ifd, role in zip(slide.tiff.ifds, roles) if role == "level"]
        if not levels:
            return

        def size(ifd: Ifd) -> tuple[int, int]:
            return ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0

        largest = max(size(ifd) for ifd in levels)
        full = [ifd for ifd in levels if size(ifd) == largest
                and not (ifd.int_value(254, bo, 0) or 0) & 1]
        if len(full) > 1:
            raise SlideError(f"{len(full)} full-resolution images of the same size (the channels "
                             "or planes of a multi-channel TIFF such as a QPTIFF): not supported; "
                             "refused so that no channel is lost")

    def warnings(self, slide: TiffSlide) -> list[str]:
        return ["unknown vendor: only standard TIFF tags known to be safe were kept; the "
                "ImageDescription and every private tag were removed"]


ADAPTER = GenericTiffAdapter()
