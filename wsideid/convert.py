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
from dataclasses import dataclass
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
        source_levels = [_sampled_tiles(slide, img) for img in adapter.stored_levels(slide)]
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
            _clean_frames(f, fields)
            _settle_write_stamps(f, policy, fields)
        plan = Plan("dicom-wsi", [], fields)
        problems = _verify(files, plan, policy, keyring, source_levels, job.path, allow_transcode,
                           before)
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
            source_levels: list[SampledLevel], source: Path, allow_transcode: bool,
            before) -> list[str]:
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
        problems += _check_not_reencoded(files, source_levels, source)
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


@dataclass
class SampledLevel:
    """A spread of one stored level's tiles, as compressed scan data."""
    width: int
    height: int
    tiles: int
    samples: list[tuple[int, bytes]]


def _sampled_tiles(slide, level: Image) -> SampledLevel:
    runs = level.runs
    picks = np.linspace(0, len(runs) - 1, min(SAMPLED_TILES, len(runs))).astype(int).tolist()
    samples = []
    for i in picks:
        if runs.counts[i] <= 0:
            continue
        with open(slide.files[int(runs.files[i])], "rb") as fh:
            samples.append((i, _scan_data(os.pread(fh.fileno(), int(runs.counts[i]),
                                                   int(runs.offsets[i])))))
    return SampledLevel(level.width, level.height, len(runs), samples)


def _scan_data(stream: bytes) -> bytes:
    if stream[:2] == b"\xff\xd8":
        at = stream.find(b"\xff\xda")
        return stream[at:].rstrip(b"\x00") if at >= 0 else stream
    return stream.rstrip(b"\x00")


def _clean_frames(path: Path, fields: list[Field]) -> None:
    """Text segments that came along into the frames (a source tile's APPn/COM, or the
    JPEGTables segments wsidicomizer puts into every frame) are removed: the instance is
    rebuilt from its cleaned fragments."""
    from .adapters.dicom import J2K_SYNTAXES, JPEG_SYNTAXES, padded_frame
    from .containers.dicom.writer import write_instance
    from .images import codestreams

    ds, start = read_header(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    codec = "jpeg" if syntax in JPEG_SYNTAXES else "j2k" if syntax in J2K_SYNTAXES else None
    if codec is None:
        return
    pixels = locate_pixels(path, start)
    fd = os.open(path, os.O_RDONLY)
    try:
        found = codestreams.clean_runs(fd, os.fstat(fd).st_size, pixels.frame_offsets,
                                       pixels.frame_lengths, codec, prepare=padded_frame)
    finally:
        os.close(fd)
    replaced = {}
    for result in found:
        if isinstance(result, codestreams.Unparseable):
            raise SlideError(f"converted {path.name} frame {result.index}: outside its codec's "
                             f"grammar ({result.reason}); the slide is refused")
        replaced[result.index] = result.data
        for marker, payload in result.removed:
            fields.append(Field(f"codestream:{marker}", f"converted {path.name} frame {result.index}",
                                segments_text(payload), "remove",
                                why="text segment carried into a frame"))
    if not replaced:
        return
    for tag in (0x7FE00001, 0x7FE00002):  # Extended Offset Table: offsets change
        if tag in ds:
            del ds[tag]
    rebuilt = path.with_name(f".{path.name}.rebuilt")
    write_instance(ds, path, pixels, rebuilt, replaced)
    os.replace(rebuilt, path)


def segments_text(payload: bytes) -> str:
    from .images.segments import payload_text

    return payload_text(payload)


def _check_not_reencoded(files: list[Path], levels: list[SampledLevel], source: Path) -> list[str]:
    """Every converted level carries the source's compressed data unchanged: a spread of
    frames equals, in its compressed scan data, the source tile at the same index (a level
    stored as tiles of the same grid); where the source level is not stored as such tiles
    (NDPI: one JPEG per level, cut at its restart markers), a spread of frames decodes to
    exactly the source's pixels there, as OpenSlide reads them."""
    problems = []
    for f in files:
        ds, start = read_header(f)
        if role_of(ds) != "level":
            continue
        width = int(ds.get("TotalPixelMatrixColumns", 0))
        height = int(ds.get("TotalPixelMatrixRows", 0))
        pixels = locate_pixels(f, start)
        same = [lv for lv in levels if (lv.width, lv.height, lv.tiles)
                == (width, height, len(pixels.frame_offsets))]
        if same:
            problems += _compare_tiles(f, pixels, same[0])
        else:
            problems += _compare_pixels(f, ds, pixels, source)
    return problems


def _compare_tiles(f: Path, pixels, level: SampledLevel) -> list[str]:
    with open(f, "rb") as fh:
        for index, tile in level.samples:
            fh.seek(int(pixels.frame_offsets[index]))
            if _scan_data(fh.read(int(pixels.frame_lengths[index]))) != tile:
                return [f"{f.name}: frame {index} was re-encoded during conversion "
                        "(pass --allow-transcode to accept that)"]
    return []


def _compare_pixels(f: Path, ds, pixels, source: Path) -> list[str]:
    import imagecodecs
    import openslide

    width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    tw, th = int(ds.Columns), int(ds.Rows)
    try:
        slide = openslide.OpenSlide(str(source))
    except openslide.OpenSlideError:
        return [f"{f.name}: a level the source does not store as tiles, and no reader to "
                "compare its pixels with: cannot show it was not re-encoded (pass "
                "--allow-transcode to accept that)"]
    with slide:
        if (width, height) not in slide.level_dimensions:
            return [f"{f.name}: a level of {width}x{height} that the source does not have: "
                    "re-sampled (pass --allow-transcode to accept that)"]
        level = list(slide.level_dimensions).index((width, height))
        down = slide.level_downsamples[level]
        cols = -(-width // tw)
        n = len(pixels.frame_offsets)
        with open(f, "rb") as fh:
            for index in sorted(set(np.linspace(0, n - 1, min(4, n)).astype(int).tolist())):
                fh.seek(int(pixels.frame_offsets[index]))
                frame = imagecodecs.imread(fh.read(int(pixels.frame_lengths[index])))
                x, y = (index % cols) * tw, (index // cols) * th
                w, h = min(tw, width - x), min(th, height - y)
                region = slide.read_region((int(x * down), int(y * down)), level, (w, h))
                want = np.asarray(region)[:, :, :3]
                if frame.ndim == 2:
                    frame = np.repeat(frame[:, :, None], 3, axis=2)
                if not np.array_equal(frame[:h, :w, :3], want):
                    return [f"{f.name}: frame {index} does not decode to the source's pixels: "
                            "re-encoded during conversion (pass --allow-transcode to accept that)"]
    return []
