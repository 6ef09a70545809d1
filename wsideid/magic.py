"""Recognise slide files by their first bytes (never by name), without importing readers."""
from __future__ import annotations

from pathlib import Path

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
DICM_OFFSET = 128  # PS3.10 7.1: 128-byte preamble, then "DICM"


def is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in TIFF_MAGIC
    except OSError:
        return False


def is_mrxs(path: Path) -> bool:
    """MIRAX has no magic number: OpenSlide's rule is a name ending in .mrxs with a folder of
    the same name beside it. Any case is routed here so that the adapter can say what is
    wrong (OpenSlide wants lower case; the adapter checks that and the folder)."""
    return path.name.lower().endswith(".mrxs") and path.is_file()


def is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(DICM_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False
