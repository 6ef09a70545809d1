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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import adapters, associated
from .adapters.dicom import DicomPlanner, role_of
from .adapters.dicom_labels import DCIODVFY_BLANKED_OVERVIEW
from .background import checks_in_background
from .catalog import Entry
from .containers.dicom.io import locate_pixels, read_header
from .containers.files import Staging
from .dates import DICOM as DICOM_DATES
from .errors import SlideError, VerificationError
from .keyring import Keyring
from .library_warnings import withheld
from .model import Field, Image, Job, Plan, RedactImage, ReplaceImage, Result
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
    """Convert and de-identify one slide; libraries' warnings counted, never printed."""
    with withheld() as caught:
        result = _convert(job, policy, keyring, outdir, allow_transcode)
    if result.plan is not None:
        result.plan.warnings += caught.summary()
        result.plan.library_log += caught.log_summary()
    return result


def _convert(job: Job, policy: Policy, keyring: Keyring, outdir: Path,
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
        stored = adapter.stored_levels(slide)
        if any("jp2000" in img.compression or "jpeg2000" in img.compression for img in stored):
            # wsidicomizer (0.26) writes Aperio's JPEG 2000 tiles under a JPEG transfer syntax;
            # the frames would then be nothing their header says
            raise SlideError("cannot convert: its levels are JPEG 2000, which wsidicomizer does "
                             "not carry into DICOM correctly; de-identify it as it is with "
                             "`wsideid deid`")
        source_levels = [_sampled_tiles(slide, img) for img in stored]
        fp = adapter.fingerprint(slide)
        naming = adapter.naming(slide, keyring)
        # the label, overview and thumbnail, looked at as `deid` does
        policy, found, warnings, new_images = associated.decide(
            adapter, slide, policy, associated.examine(adapter, slide, policy), naming)
        extras = Associated.of(adapter.images(slide), policy, new_images)
    finally:
        slide.close()
    pseudonym = naming.pseudonym
    planner = DicomPlanner(policy, keyring)
    fields: list[Field] = list(found)
    identity = {"PatientID": pseudonym, "PatientName": pseudonym,
                "ContainerIdentifier": pseudonym}

    def deidentify(ds, _metadata):
        """Applied by wsidicomizer to every instance's metadata before it is written."""
        slide_label = "LabelText" in ds or "BarcodeValue" in ds   # a LABEL's Slide Label module
        planner.clean(ds, fields, "converted")
        for keyword, value in identity.items():
            fields.append(Field(f"dicom:{keyword}", "converted", str(ds.get(keyword, "") or ""),
                                "replace", value, why="the slide's pseudonym"))
            setattr(ds, keyword, value)
        planner.mark(ds)
        if slide_label:   # Type 2 (PS3.3 C.8.12.8): present, empty; a new label fills them
            ds.LabelText = ds.BarcodeValue = ""
        return ds

    uids = keyring.uid_sequence(fp)
    staging = Staging(outdir, pseudonym, kind="folder")
    try:
        try:
            written = WsiDicomizer.convert(
                job.path, staging.path, include_label=extras.label in ("keep", "replace"),
                include_overview=extras.overview in ("keep", "redact"),
                include_thumbnail=extras.thumbnail == "keep",
                include_confidential=False,
                uid_generator=lambda: UID(next(uids)), metadata_post_processor=deidentify,
                workers=1)
        except KeyError as exc:   # opentile reads vendor metadata by key
            missing = "MPP, the pixel spacing" if exc.args == ("MPP",) else repr(exc.args[0])
            raise SlideError(f"cannot convert: the slide's metadata has no {missing}, which "
                             "wsidicomizer needs to build a DICOM WSI series") from exc
        except Exception as exc:  # noqa: BLE001 - wsidicomizer raises many types
            # its message may quote the slide's metadata: the kind of failure only
            raise SlideError(f"wsidicomizer could not convert the slide ({type(exc).__name__})") from exc
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
        files, left_out = _leave_out_undecodable(files)
        warnings += left_out + extras.replace_label(files, pseudonym) + extras.blank(files)
        plan = Plan("dicom-wsi", [], fields, warnings)
        problems = _verify(files, plan, policy, keyring, source_levels, job.path, allow_transcode,
                           extras.blanked)
        if not problems:
            problems = extras.verify(files, pseudonym)
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
            blanked: set[Path] = frozenset()) -> list[str]:
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
        errors = {e for e in check.result() or ()
                  if not (f in blanked and DCIODVFY_BLANKED_OVERVIEW in e)}
        if errors:
            problems.append(f"{f.name}: dciodvfy: {sorted(errors)[0]}")
    after = openslide_view(files[0])
    if after is None:
        problems.append("OpenSlide cannot open the converted slide")
    else:
        # the levels as stored (an OME SubIFD pyramid OpenSlide does not show; NDPI levels
        # OpenSlide adds by cutting at restart markers are not stored ones)
        stored = sorted(((lv.width, lv.height) for lv in source_levels), reverse=True)
        if not stored:   # a format whose levels are no stored images (MIRAX): as OpenSlide shows it
            view = openslide_view(source)
            stored = list(view.level_dimensions) if view is not None else []
        if list(after.level_dimensions) != stored:
            problems.append(f"levels differ from the source's stored levels {tuple(stored)}: "
                            f"{after.level_dimensions}")
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
class Associated:
    """The label and overview of a conversion: what happens to each (the slide's policy after
    their checks), the synthesized label, the source overview's blanked label area."""
    label: str = "drop"
    overview: str = "drop"
    thumbnail: str = "drop"
    new: ReplaceImage | None = None
    area: RedactImage | None = None
    blanked: set[Path] = field(default_factory=set)

    @classmethod
    def of(cls, images: list[Image], policy: Policy, new_images: list) -> Associated:
        out = cls()
        for image in images:
            action = policy.image_action_for(image.index, image.role)
            if image.role == "label":
                out.label = action
            elif image.role in ("macro", "overview"):
                out.overview = action
            elif image.role == "thumbnail":
                # wsidicomizer writes the thumbnail its reader shows: it goes when the image
                # the slide stores as thumbnail was dropped (a label photograph by content,
                # a barcode on it)
                out.thumbnail = action
        areas = {}
        for new in new_images:
            if isinstance(new, ReplaceImage):
                out.new = new
            else:
                areas[new.regions["role"]] = new
        # wsidicomizer's OVERVIEW is the image readers show as the macro (MIRAX also has a
        # whole-slide overview, another picture of another size)
        out.area = areas.get("macro") or areas.get("overview")
        if out.label == "replace" and out.new is None:
            out.label = "drop"
        if out.overview == "redact" and out.area is None:
            out.overview = "drop"
        return out

    def replace_label(self, files: list[Path], pseudonym: str) -> list[str]:
        """The written LABEL gets the synthesized label as its pixel data (wsidicom's own way
        to give a label, `label=`, rewrites the base data set that every instance shares).
        Its header then says what it shows: the pseudonym (dicom_labels.replace_label)."""
        from .adapters.dicom_rewrite import replace_written_label

        if self.label != "replace":
            return []
        done = []
        for f in files:
            header, _ = read_header(f)
            if role_of(header) == "label":
                replace_written_label(f, self.new.pixels, pseudonym)
                done.append(f"the label ({f.name}) replaced by a synthesized one")
        return done

    def blank(self, files: list[Path]) -> list[str]:
        """The label area of the written OVERVIEW painted: found again on its own pixels
        (barcodes, bands) and united with the source overview's boxes, scaled to its size."""
        from .adapters.dicom_rewrite import blank_written_overview
        from .images.overview import OverviewNotCleared, redact_overview

        if self.overview != "redact":
            return []
        warnings = []
        source = self.area.regions
        for f in files:
            header, start = read_header(f)
            if role_of(header) != "overview":
                continue
            pixels = _instance_picture(f, header, start)
            sw, sh = source["size"]
            h, w = pixels.shape[:2]
            boxes = [(x0 * w // sw, y0 * h // sh, -(-x1 * w // sw), -(-y1 * h // sh))
                     for x0, y0, x1, y1 in source["boxes"]]
            try:
                blanked, found, why = redact_overview(pixels, vendor_boxes=boxes)
            except OverviewNotCleared as exc:
                raise SlideError(f"the converted overview: {exc}") from None
            regions = associated.label_area(Image("converted overview", "overview", w, h, ""),
                                            found, blanked, why).regions
            blank_written_overview(f, regions)
            self.blanked.add(f)
            self.area = RedactImage(self.area.image, {**regions, "image": f.name})
            warnings.append(f"the converted overview ({f.name}) redacted: {why}")
        return warnings

    def verify(self, files: list[Path], pseudonym: str) -> list[str]:
        """The label, overview and thumbnail the series holds, decoded again through wsidicom
        (or the DICOM adapter): none that was to be left out, a replaced label decoding to the
        pseudonym only, nothing decoding on any other, a redacted area uniform."""
        from .verify import associated as check

        actions = {"label": self.label, "overview": self.overview, "thumbnail": self.thumbnail}
        held = {role_of(read_header(f)[0]) for f in files} & set(actions)
        problems = [f"the {role} image was to be left out but the series holds it"
                    for role in sorted(held) if actions[role] == "drop"]
        wanted = {role: check.Expected(
                      replaced=actions[role] == "replace",
                      area=self.area.regions if actions[role] == "redact" and self.area else None)
                  for role in held if actions[role] != "drop"}
        if wanted:
            pictures = check.reader_pictures(adapters.by_name("dicom-wsi"), files, set(wanted))
            problems += check.check(pictures, wanted, pseudonym)
        return problems


def _leave_out_undecodable(files: list[Path]) -> tuple[list[Path], list[str]]:
    """A label, overview or thumbnail that wsidicomizer wrote but that does not decode to the
    size its header declares is left out of the series (as `deid` drops an image it cannot
    check), with a warning."""
    from .adapters.dicom import Instance, instance_pixels

    kept, warnings = [], []
    for f in files:
        header, start = read_header(f)
        role = role_of(header)
        if role in ("label", "overview", "thumbnail") and \
                instance_pixels(Instance(0, f, header, start, role)) is None:
            f.unlink()
            warnings.append(f"the converted {role} ({f.name}) does not decode to the size its "
                            "header declares: left out")
            continue
        kept.append(f)
    return kept, warnings


def _instance_picture(path: Path, header, start: int):
    from .adapters.dicom import Instance, instance_pixels

    pixels = instance_pixels(Instance(0, path, header, start, "overview"))
    if pixels is None:
        raise SlideError("the converted overview cannot be decoded to find its label area")
    return pixels


@dataclass
class SampledLevel:
    """A spread of one stored level's tiles, as compressed scan data."""
    width: int
    height: int
    tiles: int
    tiled: bool     # stored as tiles (else strips, NDPI's restart-marker stripes: by pixels)
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
    return SampledLevel(level.width, level.height, len(runs), level.geometry.tile is not None,
                        samples)


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
    from .images import codestreams, segments

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
                                why=segments.why_removed(marker,
                                                         "text segment carried into a frame")))
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
        same = [lv for lv in levels if lv.tiled and (lv.width, lv.height, lv.tiles)
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
