"""Verification of a DICOM series output: re-read and re-plan it like any other slide, check
each header (preamble, file meta, private elements, the de-identification marks, removed
values), the frames where the copy must have put them, dciodvfy (no error its input did not
have), and OpenSlide's levels."""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from concurrent.futures import Future
from pathlib import Path

from .. import needles
from ..adapters.dicom import (
    FILE_META_KEPT,
    WRITER_META,
    DicomAdapter,
    DicomSeries,
    InstanceOut,
    padded_frame,
)
from ..adapters.dicom_labels import DCIODVFY_BLANKED_OVERVIEW
from ..background import checks_in_background
from ..containers.dicom.io import PixelElement, locate_pixels, read_header
from ..containers.output import Written
from ..errors import SlideError
from ..images import codestreams
from ..model import Job, Naming, Plan
from ..policy import Policy
from . import checks
from .compare import first_difference
from .reader import openslide_view


def verify(adapter: DicomAdapter, source: DicomSeries, plan: Plan, written: Written,
           policy: Policy, naming: Naming, before) -> list[str]:
    outputs: list[InstanceOut] = plan.output
    pairs = list(zip(outputs, written.paths))
    targets = checks.residue_targets(plan, plan.kept_values())
    # dciodvfy runs on the outputs and their inputs (needed when an output has errors, to tell
    # the new ones: scanner output often has some) while the headers and frames are checked
    futures = checks_in_background(dciodvfy_errors, [out for _, out in pairs]
                                   + [o.instance.source for o, _ in pairs])
    after, inputs = futures[:len(pairs)], futures[len(pairs):]
    problems: list[str] = []
    try:
        out_slide = adapter.read(Job(tuple(written.paths), adapter.name))
        out_plan = adapter.plan(out_slide, policy, naming, screen=False)
        problems += checks.check_fields(plan, out_plan, adapter.settled)
        problems += checks.check_images(plan, out_plan)
    except SlideError as exc:
        problems.append(f"the output does not read back: {exc}")
    for planned, out in pairs:
        try:
            header = read_header(out)
            problems += header_problems(out, targets, header, policy.deidentify)
            start = header[1]
            if planned.new_pixels is not None:
                problems += _check_new_pixels(out, locate_pixels(out, start), planned.new_pixels)
                continue
            edited = plan.run_edits(f"instance {planned.instance.number}")
            pixels = (locate_pixels(out, start)
                      if edited or planned.rebuild or not len(planned.pixels.frame_offsets)
                      else _expected_pixels(planned.pixels, start))
        except SlideError as exc:
            problems.append(f"{out.name}: cannot be read back: {exc}")
            continue
        if planned.rebuild and pixels.bot_length:
            problems.append(f"{out.name}: the Basic Offset Table was not rebuilt")
        problems += _check_rewritten(planned, out, edited)
        problems += _check_frames(planned, out, pixels, {k: e.data for k, e in edited.items()})
    blanked = {e.image for e in plan.label_areas()}
    for (planned, out), result, source_result in zip(pairs, after, inputs):
        expected = ({DCIODVFY_BLANKED_OVERVIEW} if planned.image.index in blanked else set())
        found = _check_dciodvfy(result.result(), source_result, out.name, expected)
        refuse_invalid_required(found, plan)
        problems += found
    problems += _check_openslide(pairs)
    return problems


# dciodvfy's findings for a required element that is absent or empty (PS3.3 Type 1 and 1C)
REQUIRED_MISSING = re.compile(r"(?:Missing|Empty) attribute.* Type 1C? \w+ Element=<(\w+)>")


def refuse_invalid_required(found: list[str], plan: Plan) -> None:
    """An input whose required elements hold values their VR does not allow (text that is not
    a code string, a code of no known scheme) loses them to the value checks, and its output
    then lacks what the IOD requires. That is the input's fault, not the writer's: the slide is
    refused as an input error (nothing released) when every new finding is such a missing
    required element and at least one of them is an element the plan removed as invalid."""
    if not found:
        return
    missing = [REQUIRED_MISSING.search(line) for line in found]
    if not all(missing):
        return
    removed = {word for f in plan.fields if f.action in ("remove", "replace")
               and not f.why.startswith("PS3.15")
               for word in re.findall(r"\w+", f"{f.name} {f.location}")}
    names = sorted({m.group(1) for m in missing})
    if removed & set(names):
        raise SlideError("values their VR does not allow had to be removed, and the series then "
                         f"lacks required elements ({', '.join(names)}): not valid DICOM")


def _check_rewritten(planned: InstanceOut, out: Path, edited: dict) -> list[str]:
    """Every rewritten frame is checked against its codec's grammar again."""
    codec = planned.image.runs.codec if planned.image.runs is not None else "other"
    for run, edit in edited.items():
        why = codestreams.check_run(padded_frame(edit.data), codec)
        if why is not None:
            return [f"{out.name}: frame {run} is not clean ({why})"]
    return []


def _expected_pixels(src: PixelElement, start: int) -> PixelElement:
    """Where the copied pixel data element and its frames must be in the output (the input's
    layout moved to the output's header length); `_check_frames` reads the item tags there."""
    shift = start - src.start
    return PixelElement(start, src.end + shift, src.frame_offsets + shift, src.frame_lengths)


def header_problems(out: Path, targets: list[str], header=None,
                    deidentified: bool = True) -> list[str]:
    """What is wrong with a written instance's header: private elements, missing marks, a
    file meta that disagrees, removed values still present (everything before pixel data).
    `header` is the instance's read_header() when the caller already has it. A header kept
    as stored (`redact`, not `deidentified`) is only searched for removed values."""
    ds, start = header or read_header(out)
    problems = []
    if not deidentified:
        with open(out, "rb") as fh:
            head = fh.read(start)
        return [f"{out.name}: a removed value of {len(n)} characters is still present"
                for n in needles.find_in(head, targets)]
    if bytes(ds.preamble or b"").strip(b"\x00"):
        problems.append(f"{out.name}: the file preamble is not empty")
    extra = {int(e.tag) for e in ds.file_meta} - FILE_META_KEPT - WRITER_META
    if extra:
        problems.append(f"{out.name}: file meta holds {len(extra)} element(s) it should not")
    if any(elem.tag.is_private for elem in ds.iterall()):
        problems.append(f"{out.name}: private elements remain")
    if ds.get("PatientIdentityRemoved") != "YES":
        problems.append(f"{out.name}: PatientIdentityRemoved is not YES")
    if str(ds.file_meta.MediaStorageSOPInstanceUID) != str(ds.SOPInstanceUID):
        problems.append(f"{out.name}: file meta SOP Instance UID does not match")
    with open(out, "rb") as fh:
        head = fh.read(start)
    found = needles.find_in(head, targets)
    return problems + [f"{out.name}: a removed value of {len(n)} characters is still present"
                       for n in found]


def _check_frames(planned: InstanceOut, out: Path, pixels: PixelElement,
                  edits: dict[int, bytes]) -> list[str]:
    src = planned.pixels
    source = planned.instance.source
    if len(src.frame_offsets) != len(pixels.frame_offsets):
        return [f"{out.name}: {len(pixels.frame_offsets)} fragments instead of {len(src.frame_offsets)}"]
    if not len(src.frame_offsets):  # native pixel data: one element, compared whole
        if edits:
            return _check_native(planned, out, pixels, edits)
        pairs = [(0, src.start, src.end - src.start, pixels.start, pixels.end - pixels.start)]
    else:
        pairs = [(i, int(src.frame_offsets[i]), int(src.frame_lengths[i]),
                  int(pixels.frame_offsets[i]), int(pixels.frame_lengths[i]))
                 for i in checks.sample(src.frame_lengths, edits)]
    with open(source, "rb") as a, open(out, "rb") as b:
        if len(src.frame_offsets):   # the element is closed where expected, and nothing follows
            b.seek(pixels.end - 8)
            if b.read(8) != struct.pack("<HHI", 0xFFFE, 0xE0DD, 0) or b.read(1):
                return [f"{out.name}: pixel data does not end where expected"]
        framed = bool(len(src.frame_offsets))
        kept = []
        for i, ao, an, bo, bn in pairs:
            edit = edits.get(i) if framed else None
            if edit is None and an == bn:
                # compared with its item tag (FFFE,E000 and the length), which must be the same
                kept.append((i, ao - 8, bo - 8, an + 8) if framed else (i, ao, bo, an))
                continue
            b.seek(bo - 8 if framed else bo)
            if framed and b.read(8) != struct.pack("<HHI", 0xFFFE, 0xE000, bn):
                return [f"{out.name}: frame item {i} is not where expected"]
            got = b.read(bn)
            a.seek(ao)
            want = a.read(an)
            if edit is not None:
                want = edit + (b"\x00" if len(edit) % 2 else b"")
            if got != want:
                return [f"{out.name}: pixel data differs from the input"]
        differs = first_difference(a.fileno(), b.fileno(), kept)
        if differs is not None:
            if framed:
                _, _, bo, bn = next(p for p in kept if p[0] == differs)
                if os.pread(b.fileno(), 8, bo) != struct.pack("<HHI", 0xFFFE, 0xE000, bn - 8):
                    return [f"{out.name}: frame item {differs} is not where expected"]
            return [f"{out.name}: pixel data differs from the input"]
    return []


def _check_new_pixels(out: Path, pixels: PixelElement, new) -> list[str]:
    """A replaced label's pixel data is exactly what the plan made."""
    with open(out, "rb") as fh:
        if new.native is not None:
            fh.seek(pixels.start + 12)
            got = fh.read(pixels.end - pixels.start - 12)
            same = got == new.native + (b"\x00" if len(new.native) % 2 else b"")
        else:
            got = []
            for off, n in zip(pixels.frame_offsets.tolist(), pixels.frame_lengths.tolist()):
                fh.seek(off)
                got.append(fh.read(n))
            same = got == [f + (b"\x00" if len(f) % 2 else b"") for f in new.frames]
    return [] if same else [f"{out.name}: the new label's pixel data is not the one planned"]


def _check_native(planned: InstanceOut, out: Path, pixels: PixelElement,
                  edits: dict[int, bytes]) -> list[str]:
    """Native pixel data with painted frames: the input's element with those frames replaced."""
    src = planned.pixels
    with open(planned.instance.source, "rb") as a:
        a.seek(src.start)
        want = bytearray(a.read(src.end - src.start))
    frames = int(planned.header.get("NumberOfFrames", 1) or 1)
    size = (len(want) - 12) // frames
    for i, data in edits.items():
        want[12 + i * size:12 + i * size + len(data)] = data
    with open(out, "rb") as b:
        b.seek(pixels.start)
        got = b.read(pixels.end - pixels.start)
    return [] if got == bytes(want) else [f"{out.name}: pixel data differs from the input"]


def dciodvfy_errors(path: Path) -> set[str] | None:
    exe = shutil.which("dciodvfy")
    if exe is None:
        return None
    proc = subprocess.run([exe, str(path)], capture_output=True, timeout=300)
    # dciodvfy prints values in the file's own character set: read as bytes, never decoded
    # as UTF-8 (a Latin-1 name would stop the check)
    lines = (proc.stdout + proc.stderr).decode("latin-1").splitlines()
    return {_normalise(line) for line in lines if line.startswith("Error")}


# dciodvfy quotes values (`LO [1] = <value>`, `enumerated value <value>`, `= 'c'`); messages
# go to stderr and the report, so only the dictionary's words stay: element and module names
VALUE_IN_ANGLES = re.compile(r"(?<!Element=)(?<!Module=)(?<!attribute )<[^<>]*>")
VALUE_IN_QUOTES = re.compile(r"(?<== )'[^']*'")


def _normalise(line: str) -> str:
    line = line.split(" - ", 1)[-1].strip()
    return VALUE_IN_QUOTES.sub("'…'", VALUE_IN_ANGLES.sub("<…>", line))


def _check_dciodvfy(after: set[str] | None, before: Future, name: str,
                    expected: set[str] = frozenset()) -> list[str]:
    """No dciodvfy error in the output that its input (checked alongside) did not have, but
    those `expected` (text a finding contains) of what this run wrote on purpose."""
    if not after:
        return []
    new = sorted(line for line in after - (before.result() or set())
                 if not any(text in line for text in expected))
    return [f"{name}: dciodvfy: {line}" for line in new[:3]]


def _check_openslide(pairs) -> list[str]:
    if not pairs:
        return []
    source, out = pairs[0][0].instance.source, pairs[0][1]
    before = openslide_view(source)
    if before is None:
        return []
    after = openslide_view(out)
    if after is None:
        return ["OpenSlide can no longer open the slide"]
    if after.level_dimensions != before.level_dimensions:
        return [f"OpenSlide levels changed: {before.level_dimensions} -> {after.level_dimensions}"]
    return []
