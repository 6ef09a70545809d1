"""What every TIFF-based format shares: reading the container, planning the standard tags of
every IFD (SubIFDs, EXIF and GPS included) and the text segments inside the image data.

A TIFF format adapter subclasses `TiffAdapter`, says which images are which (`classify`) and
how its text tags are rebuilt (`describe`, `text_tag`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import catalog
from ..background import Background
from ..containers.files import Staging, copy_file, fsync_dir, start_writeback
from ..containers.output import Target, Written
from ..containers.tiff.names import codec_family, compression_name, tag_name
from ..containers.tiff.reader import ASCII, Ifd, Tag, TiffFile
from ..containers.tiff.writer import IfdOut, NewValue, ascii_value, write_tiff
from ..errors import SlideError
from ..images import codestreams, segments
from ..keyring import Keyring, fingerprint
from ..model import (Field, Geometry, Image, Job, Naming, PatchRun, Plan, RedactImage,
                     ReplaceRun, Runs)
from ..policy import Policy, decide
from .base import Adapter, Probe

MAX_REPORTED_SEGMENTS = 50


class TiffSlide:
    """A slide stored in one TIFF file: the parsed container and the role of every IFD of
    its main chain (adapters may attach what else they read, such as the OME-XML tree)."""

    def __init__(self, path: Path, tiff: TiffFile, roles: list[str]):
        self.path = path
        self.tiff = tiff
        self.bo = tiff.byteorder
        self.roles = roles
        self.files = [path]
        self.extra: dict[str, Any] = {}

    def close(self) -> None:
        self.tiff.close()


@dataclass
class TiffPlanning:
    """What one planning pass of one TIFF slide accumulates."""
    slide: TiffSlide
    policy: Policy
    naming: Naming
    screen: bool
    fields: list[Field] = field(default_factory=list)
    edits: list[ReplaceRun] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class TiffAdapter(Adapter):
    container = "tiff"
    extension = ".tif"

    # ---- what an adapter says about its format -----------------------------------------
    def classify(self, slide: TiffSlide) -> list[str]:
        """Role of each IFD of the main chain."""
        roles = []
        for i, ifd in enumerate(slide.tiff.ifds):
            subfile = ifd.int_value(254, slide.bo, 0) or 0
            roles.append("level" if i == 0 or subfile & 1 and 324 in ifd.tags else "unknown")
        return roles

    def vendor_tags(self) -> catalog.Catalog | None:
        """The catalog of the format's private tags, consulted before the standard one."""
        return None

    def describe(self, ctx: TiffPlanning, ifd: Ifd, text: str) -> tuple[str | None, list[Field]]:
        """New ImageDescription (None: remove it) and the fields found inside it."""
        return None, [Field("tiff:ImageDescription", f"{ifd.label} tag 270", text, "remove",
                            why="unrecognised description; removed")]

    def text_tag(self, ctx: TiffPlanning, ifd: Ifd, code: int,
                 text: str) -> tuple[str | None, list[Field]]:
        """A text tag that holds fields of its own (ImageDescription, vendor property text)."""
        if code == 270:
            return self.describe(ctx, ifd, text)
        return None, [Field(f"tiff:{tag_name(code)}", f"{ifd.label} tag {code}", text, "remove",
                            why="no parser for this text")]

    def prepare(self, ctx: TiffPlanning) -> None:
        """Format-specific state for one planning pass (which IFDs move where, say)."""

    def after_cleaning(self, ctx: TiffPlanning, node: IfdOut, cleaned: list[ReplaceRun]) -> None:
        """Tags that follow from the image data's text segments being removed (NDPI)."""

    def warnings(self, slide: TiffSlide) -> list[str]:
        return []

    # ---- reading -------------------------------------------------------------------------
    def detect(self, probe: Probe) -> bool:
        return probe.tiff is not None and self.claims(probe.tiff)

    def claims(self, tiff: TiffFile) -> bool:
        raise NotImplementedError

    def read(self, job: Job) -> TiffSlide:
        if job.path.is_dir():
            raise SlideError("is a folder, not a slide file")
        tiff = TiffFile(job.path)
        try:
            slide = TiffSlide(job.path, tiff, [])
            self.load(slide)
            slide.roles = self.classify(slide)
            return slide
        except BaseException:
            tiff.close()
            raise

    def load(self, slide: TiffSlide) -> None:
        """Read what the format keeps outside the TIFF structure (before classification)."""

    def writer(self, slide: TiffSlide, naming: Naming, target: Target) -> "TiffWriter":
        return TiffWriter(slide, naming, target)

    def fingerprint(self, slide: TiffSlide) -> bytes:
        return fingerprint(slide.path)

    def naming(self, slide: TiffSlide, keyring: Keyring) -> Naming:
        fp = self.fingerprint(slide)
        pseudonym = keyring.slide_pseudonym(fp)
        return Naming(pseudonym, pseudonym + self.extension, keyring.file_uuid(fp), keyring=keyring)

    # ---- planning ------------------------------------------------------------------------
    def images(self, slide: TiffSlide) -> list[Image]:
        images: list[Image] = []
        levels = 0
        base = slide.tiff.ifds[0]
        for ifd, role in zip(slide.tiff.ifds, slide.roles):
            image = self.image_of(slide, ifd, role, "keep", base)
            if role == "level":
                image.geometry.level = levels
                levels += 1
            images.append(image)
        return images

    def plan(self, slide: TiffSlide, policy: Policy, naming: Naming, screen: bool = True) -> Plan:
        ctx = TiffPlanning(slide, policy, naming, screen and policy.deidentify)
        if policy.deidentify:
            plan = self.plan_fields(ctx)
        else:
            from . import as_stored

            plan = as_stored.plan_tiff(self, ctx)
        if policy.redaction is not None:
            from . import redaction, tiff_regions

            redaction.plan_regions(plan, policy.redaction, tiff_regions.targets(self, ctx, plan))
        return plan

    def paint_target(self, ctx: TiffPlanning, node: IfdOut, role: str, level: int | None,
                     base: tuple[int, int]):
        """How a region is painted on this IFD (redaction.Target), Unsupported if it cannot
        be, None to leave it alone."""
        from . import tiff_regions

        return tiff_regions.tiff_target(ctx, node, role, level, base)

    def plan_fields(self, ctx: TiffPlanning) -> Plan:
        slide, policy = ctx.slide, ctx.policy
        self.prepare(ctx)
        images = self.images(slide)
        chain: list[IfdOut] = []
        for ifd, image in zip(slide.tiff.ifds, images):
            image.action = policy.image_action(image.role)
            if image.action == "keep":
                chain.append(self.plan_ifd(ctx, ifd, ctx.fields, kept=True))
                continue
            lost: list[Field] = []
            self.plan_ifd(ctx, ifd, lost, kept=False)
            for f in lost:
                f.action, f.new_value = "remove", None
                f.why = f"in the {image.role} image, which is dropped"
            ctx.fields.extend(lost)
        if not any(img.action == "keep" and img.role == "level" for img in images):
            raise SlideError("no pyramid level would remain")
        return Plan(self.format_name, images, ctx.fields, self.warnings(slide) + ctx.malformed,
                    edits=list(ctx.edits), output=chain)

    def image_of(self, slide: TiffSlide, ifd: Ifd, role: str, action: str, base: Ifd) -> Image:
        bo = slide.bo
        width, height = ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0
        base_w, base_h = base.int_value(256, bo, 0) or 0, base.int_value(257, bo, 0) or 0
        codec = ifd.int_value(259, bo)
        tile = ((ifd.int_value(322, bo, 0) or 0, ifd.int_value(323, bo, 0) or 0)
                if 322 in ifd.tags else None)
        downsample = (base_w / width, base_h / height) if width and height else None
        regions = ifd.data_regions(bo)
        runs = (Runs.in_file(0, regions[2], regions[3], codec_family(codec))
                if regions is not None else None)
        return Image(ifd.label, role, width, height, compression_name(codec), action,
                     Geometry(None, downsample, tile), runs)

    def tag_entry(self, code: int) -> catalog.Entry:
        vendor = self.vendor_tags()
        return catalog.lookup(([vendor] if vendor is not None else [])
                              + [catalog.load("tiff-tags")], code)

    def plan_ifd(self, ctx: TiffPlanning, ifd: Ifd, fields: list[Field], kept: bool) -> IfdOut:
        node = IfdOut(ifd, {})
        for code, tag in ifd.tags.items():
            entry = self.tag_entry(code)
            name = f"tiff:{entry.name if entry is not catalog.UNKNOWN else tag_name(code)}"
            where = f"{ifd.label} tag {code}"
            value = tag.text() if tag.dtype == ASCII else ""
            # catalog types describe text values; a binary tag's values are numbers by its type
            decided = decide(entry if tag.dtype == ASCII else replace(entry, type="text"), value,
                             ctx.policy, name=name, where=where)
            if entry is catalog.UNKNOWN and code >= 32768:
                decided.why = "private tag not in the catalog"
            action = decided.action
            hidden = _hidden_text(tag) if tag.dtype == ASCII else ""
            if action == "keep" and hidden:
                # Bytes after the string's NUL: no reader shows them, so they are a hiding place.
                node.tags[code] = ascii_value(value)
                fields.append(decided)
                fields.append(Field(f"{name} (after NUL)", where, hidden, "remove",
                                    why="bytes after the end of the string"))
            elif action == "keep":
                node.tags[code] = tag
                fields.append(decided)
            elif action == "pointer":
                node.tags[code] = tag
                node.children[code] = [self.plan_ifd(ctx, kid, fields, kept)
                                       for kid in ifd.children.get(code, [])]
                fields.append(Field(name, where, "", "keep", why=entry.why))
            elif action == "date":
                node.tags[code] = ascii_value(decided.new_value)
                fields.append(decided)
            elif action == "clean" and code == 347:
                self._clean_tables(node, tag, where, fields)
            elif action in ("description", "properties"):
                self._describe(ctx, node, ifd, tag, fields)
            else:
                fields.append(Field(name, where, value or _printable(tag), "remove",
                                    why=decided.why))
                for kid in ifd.children.get(code, []):
                    _collect_removed(kid, fields)
        for dup in ifd.duplicates:
            fields.append(Field(f"tiff:{tag_name(dup.code)}", f"{ifd.label} tag {dup.code} (repeated)",
                                dup.text() if dup.dtype == ASCII else "", "remove",
                                why="second copy of a tag; readers see only the first"))
        if ctx.screen:
            self._clean_codestreams(ctx, node, fields, kept)
        return node

    def _describe(self, ctx: TiffPlanning, node: IfdOut, ifd: Ifd, tag: Tag,
                  fields: list[Field]) -> None:
        text = tag.text()
        new, found = self.text_tag(ctx, ifd, tag.code, text)
        fields.extend(found)
        hidden = _hidden_text(tag) if tag.dtype == ASCII else ""
        if hidden:
            fields.append(Field(f"tiff:{tag_name(tag.code)} (after NUL)", f"{ifd.label} tag {tag.code}",
                                hidden, "remove", why="bytes after the end of the string"))
        if new is None:
            return
        if new == text and tag.dtype == ASCII and not hidden:
            node.tags[tag.code] = tag
        else:
            node.tags[tag.code] = ascii_value(new)

    @staticmethod
    def _clean_tables(node: IfdOut, tag: Tag, where: str, fields: list[Field]) -> None:
        try:
            cleaned, removed = segments.clean_jpeg(tag.data)
        except segments.MalformedStream as exc:
            raise SlideError(f"{where} JPEGTables: {exc}") from exc
        node.tags[347] = NewValue(tag.dtype, len(cleaned), cleaned) if removed else tag
        for marker, payload in removed:
            fields.append(Field(f"jpeg:{marker}", f"{where} JPEGTables", segments.payload_text(payload),
                                "remove", why="text segment inside the JPEG tables"))
        fields.append(Field("tiff:JPEGTables", where, "", "clean" if removed else "keep",
                            why="quantisation and Huffman tables"))

    def _clean_codestreams(self, ctx: TiffPlanning, node: IfdOut, fields: list[Field],
                           kept: bool) -> None:
        ifd = node.source
        slide = ctx.slide
        regions = ifd.data_regions(slide.bo)
        family = codec_family(ifd.int_value(259, slide.bo))
        if regions is None or family == "other":
            return
        _, _, offs, cnts = regions
        seen: dict[tuple[str, str], int] = {}
        cleaned: list[ReplaceRun] = []
        for found in codestreams.clean_runs(slide.tiff.fd, slide.tiff.size, offs, cnts, family):
            if isinstance(found, codestreams.Unparseable):
                ctx.malformed.append(f"{ifd.label} run {found.index}: unparseable codestream "
                                     f"left as is ({found.reason})")
                continue
            cleaned.append(ReplaceRun(ifd.label, found.index, found.data, found.header_shift))
            for marker, payload in found.removed:
                key = (marker, segments.payload_text(payload))
                seen[key] = seen.get(key, 0) + 1
        if kept and cleaned:
            ctx.edits.extend(cleaned)
            self.after_cleaning(ctx, node, cleaned)
        for (marker, text), n in list(seen.items())[:MAX_REPORTED_SEGMENTS]:
            fields.append(Field(f"codestream:{marker}", f"{ifd.label} image data ({n} runs)", text,
                                "remove", why="text segment inside the image codestream"))


def _printable(tag: Tag) -> str:
    if tag.dtype in (1, 7) and tag.code in (700, 33723, 34377):
        return tag.data.decode("utf-8", errors="ignore").strip("\x00")
    return ""


def _collect_removed(ifd: Ifd, fields: list[Field]) -> None:
    """Text values inside a removed child IFD (EXIF, GPS), reported and searched for."""
    for code, tag in ifd.tags.items():
        if tag.dtype == ASCII or code == 37510:
            fields.append(Field(f"{ifd.kind}:{tag_name(code)}", f"{ifd.label} tag {code}",
                                tag.data.decode("latin-1").strip("\x00 "), "remove",
                                why=f"inside the removed {ifd.kind.upper()} IFD"))
    for kids in ifd.children.values():
        for kid in kids:
            _collect_removed(kid, fields)


def _hidden_text(tag: Tag) -> str:
    """Non-zero bytes after the first NUL of an ASCII value (a second string, or residue)."""
    _, _, rest = tag.data.partition(b"\x00")
    rest = rest.strip(b"\x00")
    return rest.decode("latin-1") if rest else ""


class TiffWriter:
    """Writes a planned TIFF slide: a kernel copy of the input started at once (it runs while
    the slide is planned), patched when the plan is ready; or the input itself, in place."""

    screens = False   # the plan screens the image data (beside the copy)

    def __init__(self, slide: TiffSlide, naming: Naming, target: Target):
        self.slide = slide
        self.target = target
        self.naming = naming
        self.staging: Staging | None = None
        self.copier: Background | None = None
        if target.in_place:
            self.final = slide.path.with_name(naming.output_name)
            if self.final != slide.path and self.final.exists():
                raise SlideError(f"{self.final.name} already exists next to the input")
            return
        self.staging = Staging(target.outdir, naming.output_name)
        self.fd = self.staging.open_file()
        # The kernel copies while the slide is planned (both read the input once, through the
        # page cache); writeback starts as soon as the copy is done.
        self.copier = Background(lambda: (copy_file(slide.path, self.fd), start_writeback(self.fd)))

    def finish(self, plan: Plan) -> Written:
        edits: dict[str, dict[int, bytes]] = {}
        patches: dict[str, dict[int, tuple]] = {}
        for edit in plan.edits:
            if isinstance(edit, ReplaceRun):
                edits.setdefault(edit.image, {})[edit.run] = edit.data
            elif isinstance(edit, PatchRun):
                patches.setdefault(edit.image, {})[edit.run] = edit.patches
            elif not isinstance(edit, RedactImage):   # its runs are ReplaceRun/PatchRun edits
                raise SlideError("replacing whole images is not supported yet")
        if self.staging is None:
            fd = os.open(self.slide.path, os.O_RDWR)
            try:
                result = write_tiff(self.slide.tiff, fd, plan.output, edits, patches)
                os.fsync(fd)
            finally:
                os.close(fd)
            return Written((self.slide.path,), self._rename_in_place, lambda: None,
                           result.zeroed_bytes, {"input_intact": False})
        try:
            self.copier.join()
            result = write_tiff(self.slide.tiff, self.fd, plan.output, edits, patches)
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
        return Written((self.staging.path,), self.staging.release, self.staging.discard,
                       result.zeroed_bytes, {"input_intact": True})

    def abort(self) -> None:
        if self.staging is not None:
            if self.copier is not None:
                try:
                    self.copier.join()
                except BaseException:  # noqa: BLE001 - the copy's own failure is not the news
                    pass
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.staging.discard()

    def _rename_in_place(self) -> Path:
        os.replace(self.slide.path, self.final)
        fsync_dir(self.final.parent)
        return self.final
