"""De-identify one MIRAX slide: write NAME.mrxs + NAME/ under a hidden staging folder in
OUTDIR, verify it, then rename both into place."""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from . import needles
from .adapters.mrxs import MrxsOutput, MrxsSlide, Naming
from .background import Background
from .errors import SlideError, VerificationError
from .images import segments
from .model import Plan
from .mrxs.slidedat import INDEX_NAME
from .pipeline import Result, fsync_dir
from .policy import Policy
from .pseudonym import Keyring, fingerprint
from .readers import ReaderView, openslide_view
from .tiff.writer import copy_file, data_extents, start_writeback, uncovered, zero_gaps
from .verify import FULL_COMPARE_BYTES, SAMPLE_RUNS, check_fields, check_reader

OPENSLIDE_ASSOCIATED = {"label", "macro", "thumbnail"}  # roles OpenSlide shows under their own names


def slide_naming(slide: MrxsSlide, keyring: Keyring) -> Naming:
    """Pseudonym and new SLIDE_ID from the slide's content (its Slidedat.ini names the slide
    uniquely), so renaming the input does not change them."""
    fp = fingerprint(slide.folder / "Slidedat.ini")
    return Naming(keyring.slide_pseudonym(fp), keyring.slide_identifier(fp, slide.slide_id))


def plan_mrxs(path: Path, policy: Policy, keyring: Keyring) -> Plan:
    slide = MrxsSlide(path)
    return slide.plan(policy, slide_naming(slide, keyring))[0]


def deidentify_mrxs(path: Path, policy: Policy, keyring: Keyring, outdir: Path) -> Result:
    slide = MrxsSlide(path)
    naming = slide_naming(slide, keyring)
    result = Result(path, pseudonym=naming.pseudonym)
    before = Background(lambda: openslide_view(path))   # beside the copy
    staging = outdir / f".{naming.pseudonym}.{secrets.token_hex(4)}.partial"
    staging.mkdir()
    folder = staging / naming.pseudonym
    folder.mkdir()
    try:
        fds = [os.open(folder / f"Data{i:04d}.dat", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
               for i in range(len(slide.data_paths))]
        try:
            copier = Background(lambda: [(copy_file(src, fd), start_writeback(fd))
                                         for src, fd in zip(slide.data_paths, fds)])
            try:
                plan, output = slide.plan(policy, naming)
            finally:
                copier.join()
            result.plan = plan
            result.zeroed_bytes = sum(_finish_data_file(fd, out) for fd, out in zip(fds, output.data_files))
        finally:
            for fd in fds:
                os.close(fd)
        _write_durably(folder / "Slidedat.ini", output.slidedat)
        _write_durably(folder / INDEX_NAME, output.index)
        mrxs = staging / f"{naming.pseudonym}.mrxs"
        _write_durably(mrxs, b"")
        fsync_dir(folder)
        problems = verify_mrxs(mrxs, slide, plan, output, policy, naming, before.join())
        result.output = _release(problems, staging, outdir, naming.pseudonym)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def deidentify_mrxs_in_place(path: Path, policy: Policy, keyring: Keyring) -> Result:
    """Patch the slide where it is: the data files keep every kept record where it is (dropped
    and unused bytes zeroed, headers rewritten, files cut), Slidedat.ini and Index.dat are
    replaced, NAME.mrxs emptied, then the folder and NAME.mrxs take the pseudonym. Everything
    is planned and checked before the first byte is written."""
    slide = MrxsSlide(path)
    naming = slide_naming(slide, keyring)
    result = Result(path, pseudonym=naming.pseudonym)
    parent = path.parent
    target_folder, target = parent / naming.pseudonym, parent / f"{naming.pseudonym}.mrxs"
    if target.exists() or target_folder.exists():
        raise SlideError(f"{target.name} or its folder already exists next to the input")
    extra = slide.plan_extra_files()
    if extra:
        raise SlideError(f"the slide folder holds files the slide does not use ({len(extra)}); "
                         "move them away, or de-identify into a new folder with -o")
    before = openslide_view(path)
    plan, output = slide.plan(policy, naming)
    result.plan = plan
    for src, spec in zip(slide.data_paths, output.data_files):
        fd = os.open(src, os.O_RDWR)
        try:
            result.zeroed_bytes += _finish_data_file(fd, spec)
        finally:
            os.close(fd)
    folder = slide.folder
    _rename_all(folder, [(old.name, spec.name) for old, spec in zip(slide.data_paths, output.data_files)])
    _replace_durably(folder / "Slidedat.ini", output.slidedat)
    _replace_durably(folder / INDEX_NAME, output.index)
    if slide.index_path.name != INDEX_NAME:
        slide.index_path.unlink()
    _replace_durably(path, b"")
    fsync_dir(folder)
    os.rename(folder, target_folder)
    os.rename(path, target)
    fsync_dir(parent)
    problems = verify_mrxs(target, slide, plan, output, policy, naming, before, input_intact=False)
    if problems:
        raise VerificationError("; ".join(problems))
    result.output = target
    return result


def _rename_all(folder: Path, renames: list[tuple[str, str]]) -> None:
    """Rename files within a folder in two steps, so that a name another file is about to
    leave is never overwritten (Data0001.dat -> Data0000.dat while Data0000.dat -> ...)."""
    moves = [(a, b) for a, b in renames if a != b]
    token = secrets.token_hex(4)
    for n, (a, _) in enumerate(moves):
        os.rename(folder / a, folder / f".{n}.{token}.renaming")
    for n, (_, b) in enumerate(moves):
        os.rename(folder / f".{n}.{token}.renaming", folder / b)


def _replace_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    _write_durably(tmp, data)
    os.replace(tmp, path)


def _finish_data_file(fd: int, out) -> int:
    """Zero every byte no kept record uses, write the new header and the cleaned records,
    cut the file after its last kept byte, and flush it."""
    keep = list(out.keep) + ([(0, len(out.header))] if out.header else [])
    end = out.end
    zeroed = 0
    if keep:
        starts = np.array([a for a, _ in keep] + [end], dtype=np.int64)
        ends = np.array([b for _, b in keep] + [end], dtype=np.int64)
        zeroed = zero_gaps(fd, starts, ends)
    else:
        end = 0
    for offset, data in out.replacements.items():
        os.pwrite(fd, data, offset)
    if out.header:
        os.pwrite(fd, out.header, 0)
    size = os.fstat(fd).st_size
    os.ftruncate(fd, end)
    os.fsync(fd)
    return zeroed + max(0, size - end)


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _release(problems: list[str], staging: Path, outdir: Path, name: str) -> Path:
    """Folder first, then NAME.mrxs: a slide whose .mrxs exists is complete. An earlier run's
    output of the same slide is replaced."""
    if problems:
        raise VerificationError("; ".join(problems))
    target, mrxs = outdir / name, outdir / f"{name}.mrxs"
    mrxs.unlink(missing_ok=True)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(staging / name, target)
    os.replace(staging / f"{name}.mrxs", mrxs)
    staging.rmdir()
    fsync_dir(outdir)
    return mrxs


# -- verification ----------------------------------------------------------------------------

def verify_mrxs(mrxs: Path, source: MrxsSlide, plan: Plan, output: MrxsOutput, policy: Policy,
                naming: Naming, before: ReaderView | None, input_intact: bool = True) -> list[str]:
    """Re-read and re-plan the output (tiles are not screened again: they are compared with
    the screened input instead, and the rewritten ones are screened here), search it for every
    removed value, compare kept records with the input, and open it with OpenSlide."""
    try:
        out = MrxsSlide(mrxs)
        out_plan, _ = out.plan(policy, naming, scan_codestreams=False)
    except SlideError as exc:
        return [f"the output does not read back: {exc}"]
    problems = check_fields(plan, out_plan, settled=("keep", "replace"))
    problems += [f"{img.index}: {img.role} image still present" for img in out_plan.images
                 if img.action == "drop"]
    problems += _check_rewritten(output)
    problems += _check_residue(out, plan, output)
    if input_intact:   # in place, the kept records were never written: nothing to compare
        problems += _check_records(source, out, output)
    dropped = {i.role for i in plan.images if i.action == "drop" and i.role in OPENSLIDE_ASSOCIATED}
    problems += check_reader(mrxs, dropped, before, exact=True)
    return problems


def _check_rewritten(output: MrxsOutput) -> list[str]:
    problems = []
    for spec in output.data_files:
        for offset, data in spec.replacements.items():
            if segments.clean_image(data)[1]:
                problems.append(f"{spec.name}: the image rewritten at {offset} still has text segments")
    return problems


def _check_residue(out: MrxsSlide, plan: Plan, output: MrxsOutput) -> list[str]:
    """Every removed value is absent from Slidedat.ini, Index.dat and NAME.mrxs; every data
    file byte outside the kept records is zero apart from the header."""
    kept_texts = [f.new_value or f.value for f in plan.fields if f.action in ("keep", "date", "replace")]
    targets = needles.usable(plan.removed_values(), kept_texts)
    problems = []
    for path in (out.folder / "Slidedat.ini", out.folder / INDEX_NAME, out.path):
        found = needles.find_in_file(path, targets)
        problems += [f"{path.name}: a removed value of {len(n)} characters is still there" for n in found]
    for path, spec in zip(out.data_paths, output.data_files):
        with open(path, "rb") as fh:
            fd = fh.fileno()
            size = os.fstat(fd).st_size
            if size != spec.end:
                problems.append(f"{path.name}: {size} bytes, expected {spec.end}")
            header = os.pread(fd, len(spec.header), 0)
            if header != spec.header or needles.find_in(header, targets):
                problems.append(f"{path.name}: the header is not the rewritten one")
            for a, b in uncovered(spec.keep + [(0, len(spec.header))], size):
                for x, y in data_extents(fd, a, b):
                    if np.frombuffer(os.pread(fd, y - x, x), dtype=np.uint8).any():
                        problems.append(f"{path.name}: bytes {x}-{y} belong to no kept record "
                                        "and are not zero")
                        break
    return problems


def _check_records(source: MrxsSlide, out: MrxsSlide, output: MrxsOutput) -> list[str]:
    """Kept records are the input's bytes (or their cleaned version): all of them up to
    FULL_COMPARE_BYTES in all, above that a spread sample of SAMPLE_RUNS shared by the data
    files, plus every rewritten record."""
    problems = []
    total = sum(b - a for spec in output.data_files for a, b in set(spec.keep))
    per_file = max(16, SAMPLE_RUNS // len(output.data_files))
    for fileno, spec in enumerate(output.data_files):
        ranges = sorted(set(spec.keep))
        picks = range(len(ranges))
        if total > FULL_COMPARE_BYTES and len(ranges) > per_file:
            picks = sorted(set(np.linspace(0, len(ranges) - 1, per_file).astype(int).tolist())
                           | {i for i, (a, _) in enumerate(ranges) if a in spec.replacements})
        with open(source.data_paths[fileno], "rb") as src, open(out.data_paths[fileno], "rb") as dst:
            for i in picks:
                a, b = ranges[i]
                want = spec.replacements.get(a) or os.pread(src.fileno(), b - a, a)
                if os.pread(dst.fileno(), b - a, a) != want[:b - a]:
                    problems.append(f"{out.data_paths[fileno].name}: record at {a} differs from the input")
                    break
    return problems
