"""Locate the Pixel Data element of a DICOM file and its frames without loading them.

Explicit VR Little Endian data sets (every WSI transfer syntax): the element is
tag (7FE0,0010), VR OB/OW, 2 reserved bytes, a 4-byte length; encapsulated pixel data has an
undefined length and is a sequence of items (FFFE,E000) (the first is the Basic Offset Table)
closed by (FFFE,E0DD) (PS3.5 A.4).
"""
from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom

from ...errors import SlideError
from ..files import read_sequentially

ITEM = (0xFFFE, 0xE000)
SEQ_END = (0xFFFE, 0xE0DD)
UNDEFINED = 0xFFFFFFFF


@dataclass
class PixelElement:
    start: int                 # offset of the (7FE0,0010) tag
    end: int                   # offset just past the element
    frame_offsets: np.ndarray  # file offsets of each fragment's bytes (encapsulated only)
    frame_lengths: np.ndarray
    bot_offset: int = 0        # file offset and length of the Basic Offset Table item's value
    bot_length: int = 0


MAX_DEPTH = 64     # sequences nested deeper than this are not a slide's (WSI uses < 10)


def read_header(path: Path) -> tuple[pydicom.Dataset, int]:
    """The data set without pixel data, and the offset where the pixel data element starts.
    Every element is parsed here, at any depth (pydicom parses lazily): a value that cannot
    be parsed (an unknown VR, a transfer syntax that is no transfer syntax, a sequence nested
    past MAX_DEPTH) is this file's SlideError now, not an exception later. A value that breaks
    its VR's rules only warns, whatever another library set (wsidicom makes pydicom raise): the
    planner's own checks decide about it (adapters/dicom_values.py), the same in every process."""
    try:
        with open(path, "rb") as fh, _warning_on_invalid_values():
            check_file_meta(fh)
            fh.seek(0)
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            check_no_file_meta_in_data_set(ds)
            start = fh.tell()
            syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            if syntax is not None and not (isinstance(syntax, pydicom.uid.UID)
                                           and syntax.is_transfer_syntax):
                raise SlideError("its TransferSyntaxUID is not a known transfer syntax")
            _parse_all(ds.file_meta, 0)
            _parse_all(ds, 0)
        return ds, start
    except SlideError as exc:
        raise SlideError(f"not a readable DICOM file: {exc}") from None
    except RecursionError:
        raise SlideError("not a readable DICOM file: sequences nested too deep") from None
    except NotImplementedError as exc:   # an unknown VR: the message names VR and tag only
        raise SlideError(f"not a readable DICOM file: {_bounded(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        # other messages may quote element values: only the kind of failure is told
        raise SlideError(f"not a readable DICOM file: it is damaged ({type(exc).__name__} "
                         "while parsing)") from None


FILE_META_MOST = 1 << 20     # a File Meta group longer than this is refused


def check_file_meta(fh: BinaryIO) -> None:
    """The File Meta Information group (0002), read the way pydicom reads it (its own reader:
    explicit VR, then implicit VR as pydicom retries), holds no sequence and no value of
    undefined length (PS3.10 7.1 defines neither) and is at most 1 MB. pydicom formats a
    (0002,0000) that is a sequence into a log message, and that text grows exponentially with
    the sequence's nesting (an exception's traceback is quoted at every level): a fuzzed 5 KB
    file took more than 24 GB of memory. Elements are looked at raw, never formatted."""
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.valuerep import VR

    try:
        read_preamble(fh, False)
    except Exception:  # noqa: BLE001 - no preamble: dcmread refuses the file itself
        return
    start = fh.tell()
    for implicit in (False, True):
        fh.seek(start)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # dcmread says what it has to say
                group = read_dataset(fh, is_implicit_VR=implicit, is_little_endian=True,
                                     stop_when=lambda tag, vr, length: tag >> 16 != 2)
        except Exception:  # noqa: BLE001 - what this reading cannot parse, dcmread reports
            continue
        for element in group.elements():        # raw elements: nothing converted
            if element.VR == "SQ" or element.length == UNDEFINED:
                raise SlideError("its File Meta Information holds a sequence or a value of "
                                 "undefined length (PS3.10 7.1 allows neither)")
        if fh.tell() - start > FILE_META_MOST:
            raise SlideError("its File Meta Information is longer than 1 MB")
        first = next(iter(group.elements()), None)
        if first is None or first.VR in VR.__members__:
            return      # pydicom retries as implicit only when the first VR is unknown


def check_no_file_meta_in_data_set(ds: pydicom.Dataset) -> None:
    """Group 0002 belongs to the File Meta Information only (PS3.10 7.1); pydicom refuses to
    write such an element in the data set later, as an internal error."""
    stray = next((tag for tag in ds.keys() if tag.group == 0x0002), None)
    if stray is not None:
        raise SlideError(f"a File Meta Information element ({stray.group:04X},"
                         f"{stray.element:04X}) is in the data set (PS3.10 7.1)")


@contextmanager
def _warning_on_invalid_values() -> Iterator[None]:
    """pydicom's reading validation set to WARN for the block (restored after it)."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.WARN
    try:
        yield
    finally:
        settings.reading_validation_mode = before


def _parse_all(ds, depth: int) -> None:
    """Parse every element (values too) of a data set and its sequences."""
    if depth > MAX_DEPTH:
        raise SlideError(f"sequences nested deeper than {MAX_DEPTH}")
    for elem in ds:      # iterating converts each raw element
        if elem.VR == "SQ":
            for item in elem.value:
                _parse_all(item, depth + 1)
        else:
            elem.value  # noqa: B018 - parsed now


def _bounded(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def locate_pixels(path: Path, start: int) -> PixelElement:
    """Find the pixel data element that starts at `start` and, when encapsulated, every frame
    item in it."""
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as fh:
        read_sequentially(fh.fileno())
        fh.seek(start)
        head = fh.read(12)
        if len(head) < 12:
            raise SlideError("DICOM file ends before its pixel data")
        group, elem = struct.unpack("<HH", head[:4])
        if (group, elem) != (0x7FE0, 0x0010) or head[4:6] not in (b"OB", b"OW"):
            raise SlideError("pixel data is not an explicit VR little endian OB/OW element")
        length = struct.unpack("<I", head[8:12])[0]
        if length != UNDEFINED:
            end = start + 12 + length
            if end > size:
                raise SlideError("pixel data runs past the end of the file (truncated?)")
            return PixelElement(start, end, np.zeros(0, np.int64), np.zeros(0, np.int64))
        offsets, lengths, end = _walk_items(fh, start + 12, size)
        # the first item is the Basic Offset Table
        if not offsets:
            raise SlideError("encapsulated pixel data without its Basic Offset Table item")
        return PixelElement(start, end, np.asarray(offsets[1:], np.int64),
                            np.asarray(lengths[1:], np.int64), offsets[0], lengths[0])


def _walk_items(fh, pos: int, size: int) -> tuple[list[int], list[int], int]:
    """Offsets and lengths of every item up to the sequence delimiter, and where the element
    ends. Only the 8-byte item tags are read (a frame's bytes are skipped), with pread: a
    memory map would kill the process (SIGBUS) if the file shrank while it is walked; a short
    read is an error like any truncation."""
    offsets: list[int] = []
    lengths: list[int] = []
    fd = fh.fileno()
    while True:
        if pos + 8 > size:
            raise SlideError("encapsulated pixel data is truncated")
        head = os.pread(fd, 8, pos)
        if len(head) < 8:
            raise SlideError("the file became shorter while it was read")
        g, e, n = struct.unpack("<HHI", head)
        if (g, e) == SEQ_END:
            return offsets, lengths, pos + 8
        if (g, e) != ITEM or pos + 8 + n > size:
            raise SlideError("encapsulated pixel data is corrupt or truncated")
        offsets.append(pos + 8)
        lengths.append(n)
        pos += 8 + n
