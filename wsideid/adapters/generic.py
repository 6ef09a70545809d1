"""Generic TIFF: a TIFF no vendor adapter claims.

Only the standard-tag treatment applies (formats/tiff-tags.toml); the ImageDescription, whose
meaning is unknown, is removed; private tags are removed. The first IFD and every further tiled
reduced-resolution IFD are pyramid levels (what OpenSlide's generic-tiff reader shows);
any other image is of unknown role and dropped.
"""
from __future__ import annotations

from .tiffbase import TiffSlide


class GenericTiffSlide(TiffSlide):
    format = "generic-tiff"
    extension = ".tif"

    def classify(self) -> list[str]:
        roles = []
        for i, ifd in enumerate(self.tiff.ifds):
            subfile = ifd.int_value(254, self.bo, 0) or 0
            if i == 0 or (322 in ifd.tags and subfile & 1 and not subfile & 4):
                roles.append("level")
            else:
                roles.append("unknown")
        return roles

    def warnings(self) -> list[str]:
        return ["unknown vendor: only standard TIFF tags known to be safe were kept; the "
                "ImageDescription and every private tag were removed"]
