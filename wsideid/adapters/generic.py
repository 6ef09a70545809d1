"""Generic TIFF: a TIFF no vendor adapter claims.

Only the standard-tag treatment applies (formats/tiff-tags.toml); the ImageDescription, whose
meaning is unknown, is removed; private tags are removed. The first image is the slide when it is
the largest (stripped or tiled; OpenSlide's generic-tiff reader would skip a stripped one, but
its pixels are the slide's best), else the first tiled one; a later tiled image is a level when
it is shaped like a reduced copy of it, anything else is of unknown role and dropped. An image whose description calls it a label, barcode, macro or overview has that role
whatever its position (Ventana BIF files put a stripped label in IFD 0). Several full-resolution
images (the channels of a multi-channel fluorescence TIFF such as a QPTIFF, or planes) are not
a pyramid this reader can keep whole: such a file is refused rather than released with one.
"""
from __future__ import annotations

import re

from ..containers.tiff.reader import TiffFile
from ..errors import SlideError
from ..images.shape import reduced_copy
from .base import Probe
from .tiff import TiffAdapter, TiffSlide, ifd_size

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
        bo = slide.bo
        sizes = [ifd_size(ifd, bo) for ifd in ifds]
        tiled = [i for i, ifd in enumerate(ifds) if 322 in ifd.tags]
        # the base: the first image when it is the largest (stripped or not), else the first
        # tiled one (OpenSlide's generic reader skips stripped images)
        base = 0 if not tiled or all(reduced_copy(sizes[i], sizes[0]) for i in tiled) else tiled[0]
        roles = []
        for i, ifd in enumerate(ifds):
            words = set(WORD.findall((ifd.text(270) or "").lower()))
            if words & {"label", "barcode"}:
                roles.append("label")
            elif words & {"macro", "overview"}:
                roles.append("macro")
            elif i == base or (322 in ifd.tags and i > base
                               and reduced_copy(sizes[i], sizes[base])):
                roles.append("level")
            else:
                roles.append("unknown")
        self._refuse_several_full_resolution_images(slide, roles, sizes[base])
        return roles

    @staticmethod
    def _refuse_several_full_resolution_images(slide: TiffSlide, roles: list[str],
                                               base: tuple[int, int]) -> None:
        """Another image of the base's size that is not named a label or macro (a channel or
        a plane, tiled or stripped, whatever its NewSubfileType) cannot be dropped quietly."""
        same = [i for i, (ifd, role) in enumerate(zip(slide.tiff.ifds, roles))
                if role in ("level", "unknown") and ifd_size(ifd, slide.bo) == base]
        if len(same) > 1:
            raise SlideError(f"{len(same)} full-resolution images of the same size (the channels "
                             "or planes of a multi-channel TIFF such as a QPTIFF): not supported; "
                             "refused so that no channel is lost")

    def warnings(self, slide: TiffSlide) -> list[str]:
        return ["unknown vendor: only standard TIFF tags known to be safe were kept; the "
                "ImageDescription and every private tag were removed"]


ADAPTER = GenericTiffAdapter()
