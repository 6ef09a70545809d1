"""Convert a slide to DICOM WSI with wsidicomizer, de-identified in the same run.

wsidicomizer writes to a hidden folder in OUTDIR, without the source's confidential metadata
(no titles, barcodes, serials, dates) and with UIDs derived from the key; every instance's
metadata goes through the PS3.15 planner before it is written (wsidicomizer's
metadata_post_processor), and the pseudonym becomes the patient and container identity. What
wsidicom stamps afterwards (the moment of writing in ContentDate/ContentTime and in an ICC
profile it makes) follows the date policy. The series is then verified like any DICOM output
(re-planned, headers, dciodvfy, OpenSlide) and tiles are shown not to be re-encoded: a spread
of frames is compared, in their compressed scan data, with the source tiles. Only then is the
folder renamed to OUTDIR/<pseudonym>.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import adapters
from .adapters.dicom import DicomPlanner, role_of
from .background import checks_in_background
from .catalog import Entry
from .containers.dicom.io import locate_pixels, read_header
from .containers.files import Staging
from .dates import DICOM as DICOM_DATES
from .errors import SlideError, VerificationError
from .keyring import Keyring
from .model import Field, Image, Job, Plan, Result
from .policy import Policy, decide
from .verify import checks
from .verify.dicom import dciodvfy_errors, header_problems
from .verify.reader import openslide_view

SAMPLED_TILES = 16
# wsidicom writes these when it writes a data set, after the metadata post-processor ran
WRITE_STAMPS = ((0x00080023, "DA"), (0x00080033, "TM"))
ICC_DATE = slice(24, 36)   # ICC.1 7.2.1: the profile header's creation date and time


def lossless_available() -> str | None:
    """None when tiles can be copied without re-encoding, else why not."""
    try:
        from turbojpeg import TurboJPEG

        TurboJPEG()
    except Exception as exc:  # noqa: BLE001 - PyTurboJPEG raises plain exceptions
        return f"libturbojpeg is not usable ({exc}); install libturbojpeg0"
    return None


def convert(job: Job, policy: Policy, keyring: Keyring, outdir: Path,
            allow_transcode: bool = False) -> Result:
    from pydicom.uid import UID
    from wsidicomizer import WsiDicomizer

    problem = lossless_available()
    if problem and not allow_transcode:
        raise SlideError(f"lossless conversion unavailable: {problem} (or pass --allow-transcode)")
    adapter = adapters.by_name(job.format)
    if adapter.container == "dicom":
        raise SlideError("the slide is DICOM WSI already: de-identify it with `wsideid deid`")
    slide = adapter.read(job)   # refuses what is not a readable slide, before writing anything
    try:
        if not adapter.tiles_copyable and not allow_transcode:
            raise SlideError("MIRAX images cannot become DICOM tiles unchanged (camera images "
                             "overlap and do not form a regular tile grid): pass "
                             "--allow-transcode to accept re-encoded tiles")
        source_tiles = _source_level0_tiles(slide, adapter.images(slide)) if adapter.tiles_copyable else []
        fp = adapter.fingerprint(slide)
    finally:
        slide.close()
    before = openslide_view(job.path)
    pseudonym = keyring.slide_pseudonym(fp)
    planner = DicomPlanner(policy, keyring)
    fields: list[Field] = []
    identity = {"PatientID": pseudonym, "PatientName": pseudonym,
                "ContainerIdentifier": pseudonym}

    def deidentify(ds, _metadata):
        """Applied by wsidicomizer to every instance's metadata before it is written."""
        planner.clean(ds, fields, "converted")
        for keyword, value in identity.items():
            fields.append(Field(f"dicom:{keyword}", "converted", str(ds.get(keyword, "") or ""),
                                "replace", value, why="the slide's pseudonym"))
            setattr(ds, keyword, value)
        planner.mark(ds)
        return ds

    uids = keyring.uid_sequence(fp)
    staging = Staging(outdir, pseudonym, kind="folder")
    try:
        try:
            written = WsiDicomizer.convert(
                job.path, staging.path, include_label=policy.label == "keep",
                include_overview=policy.macro == "keep", include_confidential=False,
                uid_generator=lambda: UID(next(uids)), metadata_post_processor=deidentify,
                workers=1)
        except Exception as exc:  # noqa: BLE001 - wsidicomizer raises many types
            raise SlideError(f"wsidicomizer could not convert the slide: {exc}") from exc
        folder = staging.path / pseudonym
        folder.mkdir()
        files = []
        for n, name in enumerate(sorted(written)):  # names are keyed UIDs; renumbered anyway
            target = folder / f"{n:04d}.dcm"
            os.replace(name, target)
            files.append(target)
        for f in files:
            _settle_write_stamps(f, policy, fields)
        plan = Plan("dicom-wsi", [], fields)
        problems = _verify(files, plan, policy, keyring, source_tiles, allow_transcode, before)
        if problems:
            raise VerificationError("; ".join(problems))
        final = staging.release([(pseudonym, pseudonym)])
    except BaseException:
        staging.discard()
        raise
    result = Result(job.path, pseudonym=pseudonym, output=final, plan=plan)
    result.plan.images = [_image_of(final / f.name) for f in files]
    return result


def _image_of(path: Path) -> Image:
    from .adapters.dicom import image_of

    return image_of(read_header(path)[0], path.name, "keep")


def _settle_write_stamps(path: Path, policy: Policy, fields: list[Field]) -> None:
    """ContentDate and ContentTime hold the moment wsidicom wrote the instance, and an ICC
    profile it made holds the moment it was made: under the date policy (removed: the PS3.15
    dummy, as for every Type 1 date), patched in place at the same length."""
    ds, start = read_header(path)
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(start))
        for tag, vr in WRITE_STAMPS:
            elem = ds.get(tag)
            if elem is None or not elem.value:
                continue
            raw = str(elem.value).encode("ascii")
            length = len(raw) + len(raw) % 2
            marker = tag.to_bytes(4, "big")
            pattern = (marker[:2][::-1] + marker[2:][::-1] + vr.encode() + length.to_bytes(2, "little")
                       + raw)
            at = head.find(pattern)
            if at < 0:
                continue
            new = _stamp_value(str(elem.value), vr, policy).encode("ascii")
            head[at + 8:at + 8 + length] = new.ljust(length, b" ")[:length]
            fields.append(Field(f"dicom:{elem.keyword}", "converted", str(elem.value),
                                "date" if vr == "DA" and policy.dates != "remove" else "replace",
                                new.decode().strip(), why="the moment of conversion; date policy"))
        for item in ds.get("OpticalPathSequence", []):
            profile = bytes(item.get("ICCProfile", b"") or b"")
            at = head.find(profile) if len(profile) > ICC_DATE.stop else -1
            if at >= 0 and any(profile[ICC_DATE]):
                head[at + ICC_DATE.start:at + ICC_DATE.stop] = bytes(ICC_DATE.stop - ICC_DATE.start)
        fh.seek(0)
        fh.write(head)
        fh.flush()
        os.fsync(fh.fileno())


def _stamp_value(value: str, vr: str, policy: Policy) -> str:
    """A conversion stamp under the date policy, as long as the original."""
    if vr == "DA":
        field = decide(Entry("ContentDate", "date", ""), value, policy, name="dicom:ContentDate",
                       where="converted", date_format=DICOM_DATES)
        return field.new_value if field.action == "date" else "19000101"
    if policy.dates == "shift":
        return value
    return "000000.000000"[:max(6, len(value.strip()))]


def _verify(files: list[Path], plan: Plan, policy: Policy, keyring: Keyring,
            source_tiles: list[tuple[int, bytes]], allow_transcode: bool, before) -> list[str]:
    targets = checks.residue_targets(plan, plan.kept_values())
    problems = []
    # dciodvfy runs in the background while the headers and frames are checked
    validity = checks_in_background(dciodvfy_errors, files)
    for f in files:
        try:
            problems += header_problems(f, targets)
        except SlideError as exc:
            problems.append(f"{f.name}: cannot be read back: {exc}")
    problems += _replan(files, plan, policy, keyring)
    if not allow_transcode:
        problems += _check_not_reencoded(files, source_tiles)
    for f, check in zip(files, validity):
        errors = check.result()
        if errors:
            problems.append(f"{f.name}: dciodvfy: {sorted(errors)[0]}")
    after = openslide_view(files[0])
    if after is None:
        problems.append("OpenSlide cannot open the converted slide")
    elif before is not None and list(after.level_dimensions) != list(before.level_dimensions)[:len(after.level_dimensions)]:
        problems.append(f"levels differ from the source: {after.level_dimensions}")
    return problems


def _replan(files: list[Path], plan: Plan, policy: Policy, keyring: Keyring) -> list[str]:
    """The written series planned like any DICOM slide: nothing may be left to do."""
    dicom = adapters.by_name("dicom-wsi")
    try:
        series = dicom.read(Job(tuple(files), dicom.name))
        naming = dicom.naming(series, keyring)
        replanned = dicom.plan(series, policy, naming, screen=False)
    except SlideError as exc:
        return [f"the converted series does not read back: {exc}"]
    return checks.nothing_left(plan, replanned, dicom.settled)


def _source_level0_tiles(slide, images: list[Image]) -> list[tuple[int, bytes]]:
    """[(tile count, b"")] + [(index, scan data)] for a spread of level-0 tiles; empty when
    level 0 is not tiled (NDPI: one JPEG that wsidicomizer splits at its restart markers)."""
    level0 = next((img for img in images if img.role == "level"), None)
    if level0 is None or level0.runs is None or level0.geometry.tile is None:
        return []
    runs = level0.runs
    picks = np.linspace(0, len(runs) - 1, min(SAMPLED_TILES, len(runs))).astype(int).tolist()
    out = [(len(runs), b"")]
    for i in picks:
        if runs.counts[i] <= 0:
            continue
        with open(slide.files[int(runs.files[i])], "rb") as fh:
            data = os.pread(fh.fileno(), int(runs.counts[i]), int(runs.offsets[i]))
        out.append((i, _scan_data(data)))
    return out


def _scan_data(stream: bytes) -> bytes:
    if stream[:2] == b"\xff\xd8":
        at = stream.find(b"\xff\xda")
        return stream[at:].rstrip(b"\x00") if at >= 0 else stream
    return stream.rstrip(b"\x00")


def _check_not_reencoded(files: list[Path], source_tiles: list[tuple[int, bytes]]) -> list[str]:
    """Sampled level-0 tiles must appear, unchanged in their compressed scan data, as the
    frames at the same index of the VOLUME instance that has one frame per source tile."""
    if not source_tiles:
        return []
    for f in files:
        ds, start = read_header(f)
        if role_of(ds) != "level":
            continue
        pixels = locate_pixels(f, start)
        if len(pixels.frame_offsets) != source_tiles[0][0]:
            continue
        with open(f, "rb") as fh:
            for index, tile in source_tiles[1:]:
                fh.seek(int(pixels.frame_offsets[index]))
                if _scan_data(fh.read(int(pixels.frame_lengths[index]))) != tile:
                    return [f"{f.name}: frame {index} was re-encoded during conversion "
                            "(pass --allow-transcode to accept that)"]
        return []
    return ["no converted level has the source's tiles, one frame per tile: cannot show they "
            "were copied (pass --allow-transcode to accept re-tiling)"]
