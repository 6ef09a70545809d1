"""Convert a slide to DICOM WSI with wsidicomizer, de-identified in the same run.

wsidicomizer writes to a hidden folder in OUTDIR, without the source's confidential metadata
(no titles, barcodes, serials, dates) and with UIDs derived from the key; every instance's
metadata goes through the PS3.15 planner before it is written (wsidicomizer's
metadata_post_processor), and the pseudonym becomes the patient and container identity.
Tiles are not re-encoded: a spread of frames is compared, in their compressed scan data,
with the source tiles. Only then is the folder renamed to OUTDIR/<pseudonym>.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from . import needles
from .adapters import dicom, open_slide
from .adapters.mrxs import MrxsSlide
from .background import checks_in_background
from .dicom_io import locate_pixels, read_header
from .dicom_pipeline import dciodvfy_errors, header_problems, release
from .errors import SlideError
from .magic import is_mrxs
from .model import Field, Plan
from .pipeline import Result
from .policy import Policy
from .pseudonym import Keyring, fingerprint
from .readers import openslide_view


def lossless_available() -> str | None:
    """None when tiles can be copied without re-encoding, else why not."""
    try:
        from turbojpeg import TurboJPEG

        TurboJPEG()
    except Exception as exc:  # noqa: BLE001 - PyTurboJPEG raises plain exceptions
        return f"libturbojpeg is not usable ({exc}); install libturbojpeg0"
    return None


class _KeyedUids:
    """Stable UIDs for one source: the same key and slide give the same UIDs on every run."""

    def __init__(self, key: bytes, source_fp: bytes):
        self.key, self.fp, self.n = key, source_fp, 0

    def __call__(self):
        from pydicom.uid import UID

        self.n += 1
        digest = hmac.new(self.key, self.fp + self.n.to_bytes(8, "big"), hashlib.sha256).digest()
        return UID("2.25." + str(int.from_bytes(digest[:16], "big")))


def convert(path: Path, policy: Policy, keyring: Keyring, outdir: Path,
            allow_transcode: bool = False) -> Result:
    from wsidicomizer import WsiDicomizer

    problem = lossless_available()
    if problem and not allow_transcode:
        raise SlideError(f"lossless conversion unavailable: {problem} (or pass --allow-transcode)")
    if is_mrxs(path):
        MrxsSlide(path)  # refuses what is not a readable MIRAX slide, before writing anything
        if not allow_transcode:
            raise SlideError("MIRAX images cannot become DICOM tiles unchanged (camera images "
                             "overlap and do not form a regular tile grid): pass "
                             "--allow-transcode to accept re-encoded tiles")
        source_tiles: list = []
        fp = fingerprint(path.with_name(path.name[:-len(".mrxs")]) / "Slidedat.ini")
    else:
        slide = open_slide(path)  # refuses what is not a supported slide, before writing anything
        try:
            source_tiles = _source_level0_tiles(slide)
        finally:
            slide.close()
        fp = fingerprint(path)
    before = openslide_view(path)
    pseudonym = keyring.slide_pseudonym(fp)
    planner = dicom.DicomPlanner(policy, keyring.key)
    fields: list[Field] = []
    identity = {"PatientID": pseudonym, "PatientName": pseudonym,
                "ContainerIdentifier": pseudonym}

    def deidentify(ds, _metadata):
        """Applied by wsidicomizer to every instance's metadata before it is written."""
        planner.clean(ds, fields, "converted")
        for keyword, value in identity.items():
            setattr(ds, keyword, value)
        planner.mark(ds)
        return ds

    staging = outdir / f".{pseudonym}.{secrets.token_hex(4)}.partial"
    staging.mkdir()
    try:
        try:
            written = WsiDicomizer.convert(
                path, staging, include_label=policy.label == "keep",
                include_overview=policy.macro == "keep", include_confidential=False,
                uid_generator=_KeyedUids(keyring.key, fp), metadata_post_processor=deidentify,
                workers=1)
        except Exception as exc:  # noqa: BLE001 - wsidicomizer raises many types
            raise SlideError(f"wsidicomizer could not convert the slide: {exc}") from exc
        files = []
        for n, name in enumerate(sorted(written)):  # names are keyed UIDs; renumbered anyway
            target = staging / f"{n:04d}.dcm"
            os.replace(name, target)
            files.append(target)
        plan = Plan("dicom-wsi", [], fields)
        final = outdir / pseudonym
        release(staging, final, _verify(files, plan, source_tiles, allow_transcode, before))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = Result(path, pseudonym=pseudonym, output=final, plan=plan)
    result.plan.images = [dicom.image_of(read_header(final / f.name)[0], f.name, "keep")
                          for f in files]
    return result


def _verify(files: list[Path], plan: Plan, source_tiles: list[bytes], allow_transcode: bool,
            before) -> list[str]:
    kept = [f.new_value or f.value for f in plan.fields if f.action in ("keep", "date", "replace")]
    targets = needles.usable(plan.removed_values(), kept)
    problems = []
    # dciodvfy runs in the background while the headers and frames are checked
    checks = checks_in_background(dciodvfy_errors, files)
    for f in files:
        try:
            problems += header_problems(f, targets)
        except SlideError as exc:
            problems.append(f"{f.name}: cannot be read back: {exc}")
    if not allow_transcode:
        problems += _check_not_reencoded(files, source_tiles)
    for f, check in zip(files, checks):
        errors = check.result()
        if errors:
            problems.append(f"{f.name}: dciodvfy: {sorted(errors)[0]}")
    after = openslide_view(files[0])
    if after is None:
        problems.append("OpenSlide cannot open the converted slide")
    elif before is not None and list(after.level_dimensions) != list(before.level_dimensions)[:len(after.level_dimensions)]:
        problems.append(f"levels differ from the source: {after.level_dimensions}")
    return problems


def _source_level0_tiles(slide) -> list[tuple[int, bytes]]:
    """[(tile count, b"")] + [(index, scan data)] for a spread of level-0 tiles; empty when
    level 0 is not tiled (NDPI: one JPEG that wsidicomizer splits at its restart markers)."""
    ifd = slide.tiff.ifds[0]
    regions = ifd.data_regions(slide.bo)
    if regions is None or 322 not in ifd.tags:
        return []
    _, _, offs, cnts = regions
    picks = np.linspace(0, len(offs) - 1, min(16, len(offs))).astype(int).tolist()
    return [(len(offs), b"")] + [(i, _scan_data(slide.tiff.read(int(offs[i]), int(cnts[i]))))
                                 for i in picks if cnts[i] > 0]


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
        if dicom.role_of(ds) != "level":
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
