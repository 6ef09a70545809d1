"""Verification of a TIFF output (SVS, NDPI, OME-TIFF, generic TIFF).

- re-read the output and plan it again under the same policy (checks.check_fields);
- search every byte outside the kept image data for every removed value;
- check kept image data against the input, byte for byte (all of it for slides up to
  FULL_COMPARE_BYTES, a spread sample above that, plus every run that was rewritten; in place,
  the rewritten runs are screened again instead);
- open the output with OpenSlide and compare what users will see with the input.
"""
from __future__ import annotations

import os

import numpy as np

from .. import adapters, needles
from ..adapters.tiff import TiffAdapter, TiffSlide
from ..containers.files import data_extents, uncovered
from ..containers.output import Written
from ..containers.tiff.writer import IfdOut
from ..images import codestreams
from ..model import KEPT, Job, Naming, Plan
from ..policy import Policy
from ..sampling import digest
from .. import needles
from . import checks
from .compare import first_difference
from .reader import ReaderView, check_reader


def verify(adapter: TiffAdapter, source: TiffSlide, plan: Plan, written: Written,
           policy: Policy, naming: Naming, before: ReaderView | None) -> list[str]:
    out_path = written.paths[0]
    detected = adapters.detect(out_path)
    if detected is not adapter:
        return [f"output is detected as {detected.name if detected else 'nothing'}, "
                f"not {adapter.name}"]
    try:
        out = adapter.read(Job((out_path,), adapter.name))
    except Exception as exc:  # noqa: BLE001 - any failure to re-read is a verification failure
        return [f"output cannot be read back: {exc}"]
    problems: list[str] = []
    try:
        # Kept image data is compared with the input below (and the input's was screened for
        # text segments while planning), so the re-plan skips screening every tile again.
        out_plan = adapter.plan(out, policy, naming, screen=False)
        if policy.deidentify:   # a slide kept as stored is not held to what deid writes
            problems += adapter.checks(source, out, plan, out_plan)
        problems += checks.check_fields(plan, out_plan, adapter.settled)
        image_problems = checks.check_images(plan, out_plan)
        problems += image_problems or _check_image_data(source, out, plan, written.info)
        kept = [f.value for f in out_plan.fields if f.action in ("keep", "date")]
        problems += _check_residue(out, checks.residue_targets(plan, kept))
    finally:
        out.close()
    # an image OpenSlide took for a level but the plan did not (not shaped like the slide)
    # is expected to be gone from the levels
    not_levels = {(img.width, img.height) for img in plan.images
                  if img.action not in KEPT} - {(img.width, img.height) for img in plan.images
                                                 if img.action in KEPT and img.role == "level"}
    problems += check_reader(out_path, {img.role for img in plan.images if img.action == "drop"},
                             before, not_levels=not_levels)
    return problems


def _payload(slide: TiffSlide) -> tuple[np.ndarray, np.ndarray]:
    starts, ends = [], []
    for root in slide.tiff.ifds:
        for ifd in root.walk():
            regions = ifd.data_regions(slide.bo)
            if regions is not None:
                _, _, offs, cnts = regions
                starts.append(offs[cnts > 0])
                ends.append((offs + cnts)[cnts > 0])
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(ends)


def _check_residue(out: TiffSlide, targets: list[str]) -> list[str]:
    """Search every byte that is not kept image data for every removed value."""
    if not targets:
        return []
    starts, ends = _payload(out)
    ranges = [extent for a, b in uncovered(zip(starts.tolist(), ends.tolist()), out.tiff.size)
              for extent in data_extents(out.tiff.fd, a, b)]
    # read a chunk at a time: the gaps of a large file (GBs of cleared bytes) never sit in
    # memory whole
    return [f"a removed value of {len(n)} characters is still in the file"
            for n in needles.find_in_ranges(out.tiff.fd, ranges, targets)]


def _check_image_data(source: TiffSlide, out: TiffSlide, plan: Plan, info: dict) -> list[str]:
    """Kept image data equals the input's (in place: the digests taken before patching), and
    rewritten runs are the plan's and hold no text segment."""
    problems = []
    input_intact = info["input_intact"]
    bo_in, bo_out = source.bo, out.bo
    for node, out_root in zip(plan.output, out.tiff.ifds):
        for src_ifd, out_ifd in _pairs(node, out_root):
            edits = {run: e.data for run, e in plan.run_edits(src_ifd.label).items()}
            patches = {run: e.patches for run, e in plan.run_patches(src_ifd.label).items()}
            a, b = src_ifd.data_regions(bo_in), out_ifd.data_regions(bo_out)
            if a is None and b is None:
                continue
            if a is None or b is None or len(a[2]) != len(b[2]):
                problems.append(f"{out_ifd.label}: image data layout changed")
                continue
            _, _, offs_in, cnts_in = a
            _, _, offs_out, cnts_out = b
            expected = cnts_in.copy()
            for index, payload in edits.items():
                expected[index] = len(payload)
            if not np.array_equal(expected, cnts_out):
                problems.append(f"{out_ifd.label}: image data byte counts changed")
                continue
            problems += _rescan_edits(out, out_ifd, offs_out, cnts_out, edits)
            if not input_intact:
                problems += _check_digests(out, out_ifd, offs_out, cnts_out,
                                           info["digests"].get(src_ifd.label, {}), edits)
                continue
            picked = checks.sample(cnts_in, {**edits, **patches})
            changed = [i for i in picked if i in edits or i in patches]
            kept = (( i, int(offs_in[i]), int(offs_out[i]), int(cnts_in[i]))
                    for i in picked if i not in edits and i not in patches)
            differs = first_difference(source.tiff.fd, out.tiff.fd, kept)
            for index in changed:
                got = os.pread(out.tiff.fd, int(cnts_out[index]), int(offs_out[index]))
                want = edits.get(index)
                if want is None:
                    want = os.pread(source.tiff.fd, int(cnts_in[index]), int(offs_in[index]))
                if index in patches:
                    want = _patched(want, patches[index])
                if got != want:
                    differs = index if differs is None else min(differs, index)
                    break
            if differs is not None:
                problems.append(f"{out_ifd.label}: image data run {differs} differs from the input")
    return problems


def _check_digests(out: TiffSlide, ifd, offs: np.ndarray, cnts: np.ndarray,
                   digests: dict[int, str], edits: dict[int, bytes]) -> list[str]:
    for index, expected in digests.items():
        if digest(os.pread(out.tiff.fd, int(cnts[index]), int(offs[index]))) != expected:
            return [f"{ifd.label}: image data run {index} differs from the input"]
    for index, payload in edits.items():
        if os.pread(out.tiff.fd, int(cnts[index]), int(offs[index])) != payload:
            return [f"{ifd.label}: image data run {index} is not the cleaned one"]
    return []


def _patched(data: bytes, patches) -> bytes:
    out = bytearray(data)
    for pos, piece in patches:
        out[pos:pos + len(piece)] = piece
    return bytes(out)


def _rescan_edits(out: TiffSlide, ifd, offs: np.ndarray, cnts: np.ndarray,
                  edits: dict[int, bytes]) -> list[str]:
    """Every rewritten run is checked against its codec's grammar again."""
    from ..containers.tiff.geometry import decoded_sizes
    from ..containers.tiff.names import codec_family

    family = codec_family(ifd.int_value(259, out.bo))
    if not edits or not codestreams.screened(family):
        return []
    need, alt = decoded_sizes(ifd, out.bo, len(offs))
    for index in edits:
        data = os.pread(out.tiff.fd, int(cnts[index]), int(offs[index]))
        sizes = (int(need[index]), int(alt[index])) if family in codestreams.SIZED else ()
        why = codestreams.check_run(data, family, sizes)
        if why is not None:
            return [f"{ifd.label}: image data run {index} is not clean ({why})"]
    return []


def _pairs(node: IfdOut, out_ifd):
    yield node.source, out_ifd
    for code, kids in node.children.items():
        for kid, out_kid in zip(kids, out_ifd.children.get(code, [])):
            yield from _pairs(kid, out_kid)
