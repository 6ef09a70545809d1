"""Generic TIFF: a TIFF no vendor adapter claims.

Only the standard-tag treatment applies (formats/tiff-tags.toml); the ImageDescription, whose
meaning is unknown, is removed; private tags are removed. The first IFD and every tiled IFD
are pyramid levels (OpenSlide's generic-tiff reader takes every tiled directory as a level,
whatever its NewSubfileType); any other (stripped) image is of unknown role and dropped.
"""
from __future__ import annotations

from ..containers.tiff.reader import TiffFile
from .base import Probe
from .tiff import TiffAdapter, TiffSlide


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
        return ["level" if i == 0 or 322 in ifd.tags else "unknown"
                for i, ifd in enumerate(slide.tiff.ifds)]

    def warnings(self, slide: TiffSlide) -> list[str]:
        return ["unknown vendor: only standard TIFF tags known to be safe were kept; the "
                "ImageDescription and every private tag were removed"]


ADAPTER = GenericTiffAdapter()
