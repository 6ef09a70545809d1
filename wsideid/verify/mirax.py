"""Verification of a MIRAX output: re-read and re-plan it (tiles are not screened again: they
are compared with the screened input instead, and the rewritten ones are screened here),
search it for every removed value, check that every data file byte outside the kept records is
zero, compare kept records with the input, and open it with OpenSlide."""
from __future__ import annotations

import os

import numpy as np

from ..adapters.mrxs import MiraxAdapter, MiraxSlide, replacements
from ..containers.files import data_extents, uncovered
from ..containers.mirax.data import MiraxOutput
from ..containers.mirax.slidedat import INDEX_NAME
from ..containers.output import Written
from ..errors import SlideError
from ..images import segments
from ..model import Job, Naming, Plan, ReplaceRun
from ..needles import find_in, find_in_file
from ..policy import Policy
from ..sampling import digest
from . import checks
from .compare import first_difference
from .reader import ReaderView, check_reader

OPENSLIDE_ASSOCIATED = {"label", "macro", "thumbnail"}  # roles OpenSlide shows under their own names


def verify(adapter: MiraxAdapter, source: MiraxSlide, plan: Plan, written: Written,
           policy: Policy, naming: Naming, before: ReaderView | None) -> list[str]:
    mrxs = written.paths[0]
    try:
        out = adapter.read(Job((mrxs,), adapter.name))
        out_plan = adapter.plan(out, policy, naming, screen=False)
    except SlideError as exc:
        return [f"the output does not read back: {exc}"]
    output: MiraxOutput = plan.output
    problems = checks.check_fields(plan, out_plan, adapter.settled)
    problems += [f"{img.index}: {img.role} image still present" for img in out_plan.images
                 if img.action == "drop"]
    problems += _check_rewritten(plan)
    problems += _check_residue(out, plan, output)
    if written.info["input_intact"]:
        problems += _check_records(source, out, plan, output)
    else:   # in place: the kept records against their digests taken before patching
        problems += _check_digests(out, written.info["digests"])
    dropped = {i.role for i in plan.images if i.action == "drop" and i.role in OPENSLIDE_ASSOCIATED}
    problems += check_reader(mrxs, dropped, before, exact=True)
    return problems


def _check_rewritten(plan: Plan) -> list[str]:
    problems = []
    for edit in plan.edits:
        if not isinstance(edit, ReplaceRun):
            continue
        if segments.clean_image(edit.data)[1]:
            problems.append(f"{edit.image}: an image rewritten in run {edit.run} still has "
                            "text segments")
    return problems


def _check_residue(out: MiraxSlide, plan: Plan, output: MiraxOutput) -> list[str]:
    """Every removed value is absent from Slidedat.ini, Index.dat and NAME.mrxs; every data
    file byte outside the kept records is zero apart from the header."""
    targets = checks.residue_targets(plan, plan.kept_values())
    problems = []
    for path in (out.folder / "Slidedat.ini", out.folder / INDEX_NAME, out.path):
        found = find_in_file(path, targets)
        problems += [f"{path.name}: a removed value of {len(n)} characters is still there" for n in found]
    for path, spec in zip(out.data_paths, output.data_files):
        with open(path, "rb") as fh:
            fd = fh.fileno()
            size = os.fstat(fd).st_size
            if size != spec.end:
                problems.append(f"{path.name}: {size} bytes, expected {spec.end}")
            header = os.pread(fd, len(spec.header), 0)
            if header != spec.header or find_in(header, targets):
                problems.append(f"{path.name}: the header is not the rewritten one")
            for a, b in uncovered(spec.keep + [(0, len(spec.header))], size):
                for x, y in data_extents(fd, a, b):
                    if np.frombuffer(os.pread(fd, y - x, x), dtype=np.uint8).any():
                        problems.append(f"{path.name}: bytes {x}-{y} belong to no kept record "
                                        "and are not zero")
                        break
    return problems


def _check_digests(out: MiraxSlide, digests: dict[int, list[tuple[int, int, str]]]) -> list[str]:
    for fileno, records in digests.items():
        with open(out.data_paths[fileno], "rb") as fh:
            for offset, length, expected in records:
                if digest(os.pread(fh.fileno(), length, offset)) != expected:
                    return [f"{out.data_paths[fileno].name}: record at {offset} differs from the input"]
    return []


def _check_records(source: MiraxSlide, out: MiraxSlide, plan: Plan, output: MiraxOutput) -> list[str]:
    """Kept records are the input's bytes (or their cleaned version): all of them up to
    FULL_COMPARE_BYTES in all, above that a spread sample of SAMPLE_RUNS shared by the data
    files, plus every rewritten record."""
    problems = []
    replaced = replacements(plan)
    total = sum(b - a for spec in output.data_files for a, b in set(spec.keep))
    per_file = max(16, checks.SAMPLE_RUNS // len(output.data_files))
    for fileno, spec in enumerate(output.data_files):
        ranges = sorted(set(spec.keep))
        rewritten = replaced.get(fileno, {})
        picks = range(len(ranges))
        if total > checks.FULL_COMPARE_BYTES and len(ranges) > per_file:
            picks = sorted(set(np.linspace(0, len(ranges) - 1, per_file).astype(int).tolist())
                           | {i for i, (a, _) in enumerate(ranges) if a in rewritten})
        with open(source.data_paths[fileno], "rb") as src, open(out.data_paths[fileno], "rb") as dst:
            differs = first_difference(src.fileno(), dst.fileno(),
                                       ((a, a, a, b - a) for a, b in (ranges[i] for i in picks)
                                        if a not in rewritten))
            for i in picks:
                a, b = ranges[i]
                if a in rewritten and os.pread(dst.fileno(), b - a, a) != rewritten[a][:b - a]:
                    differs = a if differs is None else min(differs, a)
                    break
            if differs is not None:
                problems.append(f"{out.data_paths[fileno].name}: record at {differs} differs from the input")
    return problems
