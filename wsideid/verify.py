"""Independent re-read of a written slide before it is released.

- re-parse the output and plan it again under the same policy: every field must now be kept
  (or be a date this run already transformed), and no dropped image may be left;
- search every byte outside the kept image data for every removed value;
- check kept image data against the input, byte for byte (all of it for slides up to
  FULL_COMPARE_BYTES, a spread sample above that, plus every run that was rewritten);
- open the output with OpenSlide and compare what users will see with the input.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from . import needles
from .adapters import open_slide
from .adapters.ometiff import OmeTiffSlide, schema_errors
from .adapters.tiffbase import JPEG_CODECS, TiffSlide
from .images import segments
from .model import Plan
from .policy import Policy
from .readers import ReaderView, openslide_view
from .tiff.writer import IfdOut, data_extents, uncovered

FULL_COMPARE_BYTES = 256 << 20
SAMPLE_RUNS = 256


def verify_tiff(out_path: Path, source: TiffSlide, plan: Plan, chain: list[IfdOut],
                policy: Policy, before: ReaderView | None, input_intact: bool) -> list[str]:
    problems: list[str] = []
    try:
        out = open_slide(out_path)
    except Exception as exc:  # noqa: BLE001 - any failure to re-read is a verification failure
        return [f"output cannot be read back: {exc}"]
    try:
        if type(out) is not type(source):
            problems.append(f"output is detected as {out.format}, not {source.format}")
        # Kept image data is checked against the input below (and the input's was scanned for
        # APPn/COM segments while planning), so the re-plan skips scanning every tile again
        # and only the rewritten runs are scanned once more.
        if isinstance(out, OmeTiffSlide) and isinstance(source, OmeTiffSlide):
            out.naming = source.naming
            problems += _check_ome_schema(out)
        out_plan, _ = out.plan(policy, scan_codestreams=False)
        problems += check_fields(plan, out_plan)
        kept_roles = [img.role for img in plan.images if img.action == "keep"]
        out_roles = [img.role for img in out_plan.images]
        if kept_roles != out_roles:
            problems.append(f"output images are {out_roles}, expected {kept_roles}")
        else:
            problems += _check_image_data(source, out, chain, input_intact)
        problems += _check_residue(out, plan, out_plan)
    finally:
        out.close()
    problems += check_reader(out_path, {img.role for img in plan.images if img.action == "drop"}, before)
    return problems


def _check_ome_schema(out: OmeTiffSlide) -> list[str]:
    errors = schema_errors(out.tiff.ifds[0].text(270) or "")
    return [f"OME-XML does not validate: {errors[0]}"] if errors else []


def check_fields(plan: Plan, out_plan: Plan, settled: tuple[str, ...] = ("keep",)) -> list[str]:
    """The output's re-plan finds nothing left to do (actions in `settled`, or a date this run
    already wrote), and every field the plan kept is still there."""
    written_dates = {f.new_value for f in plan.fields if f.action == "date"}
    problems = []
    for f in out_plan.fields:
        if f.action in settled or (f.action == "date" and f.value in written_dates):
            continue
        problems.append(f"{f.location}: {f.name} is still present")
    # ...and everything the plan kept is still there.
    wanted = Counter(f.name for f in plan.fields if f.action in ("keep", "date", "clean"))
    found = Counter(f.name for f in out_plan.fields if f.action in ("keep", "date"))
    for name, n in (wanted - found).items():
        problems.append(f"{name} was to be kept but is missing ({n}x)")
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


def _check_residue(out: TiffSlide, plan: Plan, out_plan: Plan) -> list[str]:
    """Search every byte that is not kept image data for every removed value."""
    kept_texts = [f.value for f in out_plan.fields if f.action in ("keep", "date")]
    targets = needles.usable(plan.removed_values(), kept_texts)
    if not targets:
        return []
    starts, ends = _payload(out)
    pieces = []
    for a, b in uncovered(zip(starts.tolist(), ends.tolist()), out.tiff.size):
        for x, y in data_extents(out.tiff.fd, a, b):
            pieces.append(os.pread(out.tiff.fd, y - x, x))
    found = needles.find_in(b"\x00".join(pieces), targets)
    return [f"a removed value of {len(n)} characters is still in the file" for n in found]


def _check_image_data(source: TiffSlide, out: TiffSlide, chain: list[IfdOut],
                      input_intact: bool) -> list[str]:
    problems = []
    bo_in, bo_out = source.bo, out.bo
    for node, out_root in zip(chain, out.tiff.ifds):
        for src_ifd, out_ifd, edits in _pairs(node, out_root):
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
            if not input_intact:
                continue
            problems += _rescan_edits(out, out_ifd, offs_out, cnts_out, edits)
            for index in _sample(cnts_in, edits):
                got = os.pread(out.tiff.fd, int(cnts_out[index]), int(offs_out[index]))
                want = edits.get(index)
                if want is None:
                    want = os.pread(source.tiff.fd, int(cnts_in[index]), int(offs_in[index]))
                if got != want:
                    problems.append(f"{out_ifd.label}: image data run {index} differs from the input")
                    break
    return problems


def _rescan_edits(out: TiffSlide, ifd, offs: np.ndarray, cnts: np.ndarray,
                  edits: dict[int, bytes]) -> list[str]:
    codec = ifd.int_value(259, out.bo)
    clean = segments.clean_jpeg if codec in JPEG_CODECS else segments.clean_j2k
    for index in edits:
        data = os.pread(out.tiff.fd, int(cnts[index]), int(offs[index]))
        if clean(data)[1]:
            return [f"{ifd.label}: image data run {index} still holds a text segment"]
    return []


def _pairs(node: IfdOut, out_ifd):
    yield node.source, out_ifd, node.data_edits
    for code, kids in node.children.items():
        for kid, out_kid in zip(kids, out_ifd.children.get(code, [])):
            yield from _pairs(kid, out_kid)


def _sample(cnts: np.ndarray, edits: dict[int, bytes]) -> list[int]:
    n = len(cnts)
    if int(cnts.sum()) <= FULL_COMPARE_BYTES or n <= SAMPLE_RUNS:
        return list(range(n))
    picks = set(np.linspace(0, n - 1, SAMPLE_RUNS).astype(int).tolist()) | set(edits)
    return sorted(picks)


def check_reader(out_path: Path, dropped: set[str], before: ReaderView | None,
                 exact: bool = False) -> list[str]:
    """OpenSlide must show the output as it showed the input: vendor, levels, MPP, objective
    power, every level and associated image decodable, and none of the `dropped` associated
    images (with `exact`, every other one it showed before must still be there)."""
    if before is None:
        return []
    after = openslide_view(out_path)
    if after is None:
        return ["OpenSlide can no longer open the slide"]
    problems = []
    for name in ("vendor", "level_dimensions", "mpp_x", "mpp_y", "objective_power"):
        if getattr(before, name) != getattr(after, name):
            problems.append(f"OpenSlide {name} changed: {getattr(before, name)} -> {getattr(after, name)}")
    try:
        _decode_corners(out_path, after)
    except Exception as exc:  # noqa: BLE001 - OpenSlide raises several types
        problems.append(f"OpenSlide cannot decode the output: {exc}")
    left = sorted(dropped & after.associated)
    if left:
        problems.append(f"OpenSlide still shows dropped images: {', '.join(left)}")
    missing = sorted((before.associated - dropped) - after.associated) if exact else []
    if missing:
        problems.append(f"OpenSlide no longer shows kept images: {', '.join(missing)}")
    return problems


def _decode_corners(path: Path, view: ReaderView) -> None:
    """Decode a region of every level and every associated image, as a user would."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        for level, (w, h) in enumerate(view.level_dimensions):
            slide.read_region((0, 0), level, (min(w, 512), min(h, 512)))
        for name in view.associated:
            slide.associated_images[name]
