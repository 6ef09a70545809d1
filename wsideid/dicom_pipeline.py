"""read -> plan -> write -> verify for a DICOM WSI series (one slide = one series)."""
from __future__ import annotations

import copy
import hashlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pydicom
from pydicom.encaps import generate_frames

from . import needles
from .adapters import dicom
from .errors import SlideError, VerificationError
from .model import Field, Plan
from .pipeline import Result
from .policy import Policy
from .pseudonym import Keyring
from .readers import openslide_view


def plan_series(files: list[Path], policy: Policy, keyring: Keyring):
    """(plan, [(source, role, cleaned dataset or None)]) for the instances of one series."""
    planner = dicom.DicomPlanner(policy, keyring.key)
    fields: list[Field] = []
    images = []
    instances = []
    series = set()
    for index, path in enumerate(sorted(files)):
        ds = dicom.read(path)
        series.add(str(ds.get("SeriesInstanceUID", "")))
        if "PixelData" not in ds:
            raise SlideError(f"{path.name}: DICOM instance without pixel data")
        role = dicom.role_of(ds)
        action = policy.image_action(role)
        where = f"instance {index}"
        images.append(dicom.image_of(ds, where, action))
        if action != "keep":
            for elem in ds.iterall():
                text = dicom._text(elem)
                if text and elem.VR != "SQ":
                    fields.append(Field(f"dicom:{elem.keyword}", where, text, "remove",
                                        why=f"in the {role} instance, which is dropped"))
            instances.append((path, role, None))
            continue
        original = copy.deepcopy(ds)
        planner.deidentify(ds, fields, where)
        planner.clean_frames(ds, fields, where)
        instances.append((path, role, (original, ds)))
    if len(series) > 1:
        raise SlideError("instances of more than one series were given as one slide")
    return Plan("dicom-wsi", images, fields), instances


def deidentify_series(files: list[Path], policy: Policy, keyring: Keyring,
                      outdir: Path) -> Result:
    result = Result(files[0])
    plan, instances = plan_series(files, policy, keyring)
    result.plan = plan
    if all(pair is None for _, _, pair in instances):
        result.message = "every instance is dropped by the image policy; nothing written"
        return result
    result.pseudonym = keyring.slide_pseudonym(hashlib.sha256(_first_series_uid(files).encode()).digest())
    target = outdir / result.pseudonym
    tmp = outdir / f".{result.pseudonym}.{secrets.token_hex(4)}.partial"
    tmp.mkdir()
    try:
        written = []
        for n, (path, role, pair) in enumerate(x for x in instances if x[2] is not None):
            out = tmp / f"{n:04d}.dcm"
            pair[1].save_as(out, enforce_file_format=True)
            written.append((path, out, pair[0], pair[1]))
        for _, out, _, _ in written:
            fd = os.open(out, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        problems = verify_series(written, plan)
        if problems:
            raise VerificationError("; ".join(problems))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.output = target
    return result


def _first_series_uid(files: list[Path]) -> str:
    return dicom.series_uid(sorted(files)[0])


def verify_series(written, plan: Plan) -> list[str]:
    problems: list[str] = []
    kept = [f.new_value or f.value for f in plan.fields if f.action in ("keep", "date", "replace")]
    targets = needles.usable(plan.removed_values(), kept)
    for source, out, original, planned in written:
        ds = pydicom.dcmread(out)
        if any(elem.tag.is_private for elem in ds.iterall()):
            problems.append(f"{out.name}: private elements remain")
        if ds.get("PatientIdentityRemoved") != "YES":
            problems.append(f"{out.name}: PatientIdentityRemoved is not YES")
        if str(ds.file_meta.MediaStorageSOPInstanceUID) != str(ds.SOPInstanceUID):
            problems.append(f"{out.name}: file meta SOP Instance UID does not match")
        found = needles.find_in(_header_bytes(out), targets)
        problems += [f"{out.name}: a removed value of {len(n)} characters is still present" for n in found]
        problems += _check_frames(original, ds, out.name)
        problems += _check_dciodvfy(source, out)
    problems += _check_openslide(written)
    return problems


def _header_bytes(path: Path) -> bytes:
    """Every byte of the file before the pixel data (which is checked frame by frame)."""
    with open(path, "rb") as fh:
        pydicom.dcmread(fh, stop_before_pixels=True)
        end = fh.tell()
        fh.seek(0)
        return fh.read(end)


def _frames(ds) -> list[bytes]:
    if getattr(ds.file_meta, "TransferSyntaxUID", None) and ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    return [bytes(ds.PixelData)]


def _check_frames(original, written, name: str) -> list[str]:
    a, b = _frames(original), _frames(written)
    if len(a) != len(b):
        return [f"{name}: {len(b)} frames instead of {len(a)}"]
    changed = sum(1 for x, y in zip(a, b) if x != y)
    if changed:
        # only frames whose text segments were removed may differ, and only by those segments
        clean = dicom.segments.clean_jpeg if b[0][:2] == b"\xff\xd8" else dicom.segments.clean_j2k
        for x, y in zip(a, b):
            if x != y and clean(x)[0] not in (y, y[:-1]):  # encapsulation pads to even length
                return [f"{name}: frame data changed beyond the removed text segments"]
    return []


def dciodvfy_errors(path: Path) -> set[str] | None:
    exe = shutil.which("dciodvfy")
    if exe is None:
        return None
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {_normalise(line) for line in lines if line.startswith("Error")}


def _normalise(line: str) -> str:
    return line.split(" - ", 1)[-1].strip()


def _check_dciodvfy(source: Path, out: Path) -> list[str]:
    after = dciodvfy_errors(out)
    if after is None or not after:
        return []
    before = dciodvfy_errors(source) or set()
    new = sorted(after - before)
    return [f"{out.name}: dciodvfy: {line}" for line in new[:3]]


def _check_openslide(written) -> list[str]:
    if not written:
        return []
    source, out = written[0][0], written[0][1]
    before = openslide_view(source)
    if before is None:
        return []
    after = openslide_view(out)
    if after is None:
        return ["OpenSlide can no longer open the slide"]
    if after.level_dimensions != before.level_dimensions:
        return [f"OpenSlide levels changed: {before.level_dimensions} -> {after.level_dimensions}"]
    return []
