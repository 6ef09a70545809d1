"""Format detection: one adapter per format, chosen by content, never by file extension."""
from __future__ import annotations

from pathlib import Path

from ..errors import SlideError
from ..tiff.reader import TiffFile
from .generic import GenericTiffSlide
from .ndpi import NdpiSlide, is_ndpi
from .ometiff import OmeTiffSlide, looks_like_ome
from .svs import SvsSlide, is_aperio
from .tiffbase import TiffSlide


def open_slide(path: Path) -> TiffSlide:
    path = Path(path)
    if path.is_dir():
        raise SlideError("is a folder, not a slide file")
    tiff = TiffFile(path)
    try:
        if is_ndpi(tiff):
            return NdpiSlide(path, tiff)
        if looks_like_ome(tiff):
            return OmeTiffSlide(path, tiff)
        if is_aperio(tiff):
            return SvsSlide(path, tiff)
        return GenericTiffSlide(path, tiff)
    except Exception:
        tiff.close()
        raise
