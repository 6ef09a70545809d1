"""Generic TIFF: a TIFF no vendor adapter claims.

Only the standard-tag treatment applies (formats/tiff-tags.toml); the ImageDescription, whose
meaning is unknown, is removed; private tags are removed. The first IFD and every tiled IFD
are pyramid levels (OpenSlide's generic-tiff reader takes every tiled directory as a level,
whatever its NewSubfileType); any other (stripped) image is of unknown role and dropped.
"""
from __future__ import annotations

from .tiffbase import TiffSlide


class GenericTiffSlide(TiffSlide):
    format = "generic-tiff"
    extension = ".tif"

    def classify(self) -> list[str]:
        return ["level" if i == 0 or 322 in ifd.tags else "unknown"
                for i, ifd in enumerate(self.tiff.ifds)]

    def warnings(self) -> list[str]:
        return ["unknown vendor: only standard TIFF tags known to be safe were kept; the "
                "ImageDescription and every private tag were removed"]
