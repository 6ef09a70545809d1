"""Instances already written (a conversion's, by wsidicomizer) given a new label or a blanked
overview: each rewritten whole under its own name, in the folder it was written to, before
anything is released."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from ..model import RedactImage, ReplaceRun
from .dicom import Instance, InstanceOut, image_of
from .dicom_labels import blank_overview, replace_label


def blank_written_overview(path: Path, regions: dict) -> int:
    """An OVERVIEW instance already written (a conversion's) with its label area painted,
    rewritten whole under its own name; returns the frames painted."""
    from ..containers.dicom.io import locate_pixels, read_header
    from ..containers.dicom.writer import write_instance

    header, start = read_header(path)
    inst = Instance(0, path, header, start, "overview")
    out = InstanceOut(inst, copy.deepcopy(header), image_of(header, "instance 0", "redact"))
    out.pixels = locate_pixels(path, start)
    edits: list[ReplaceRun] = []
    blank_overview(out, RedactImage("instance 0", regions), edits)
    rebuilt = path.with_name(f".{path.name}.blanked")
    try:
        write_instance(out.header, path, out.pixels, rebuilt, {e.run: e.data for e in edits},
                       int(out.header.get("NumberOfFrames", 1) or 1))
        os.replace(rebuilt, path)
    finally:
        rebuilt.unlink(missing_ok=True)
    return len(edits)


def replace_written_label(path: Path, pixels: np.ndarray, pseudonym: str) -> None:
    """A LABEL instance already written (a conversion's) given the synthesized label as its
    pixel data, rewritten whole under its own name."""
    from ..containers.dicom.io import read_header
    from ..containers.dicom.writer import write_new_pixels

    header, start = read_header(path)
    inst = Instance(0, path, header, start, "label")
    out = InstanceOut(inst, copy.deepcopy(header), image_of(header, "instance 0", "replace"))
    replace_label(out, pixels, pseudonym, [])
    rebuilt = path.with_name(f".{path.name}.replaced")
    try:
        write_new_pixels(out.header, rebuilt, out.new_pixels.frames, out.new_pixels.native)
        os.replace(rebuilt, path)
    finally:
        rebuilt.unlink(missing_ok=True)
