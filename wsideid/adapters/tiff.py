"""What every TIFF-based format shares: reading the container, planning the standard tags of
every IFD (SubIFDs, EXIF and GPS included) and the text segments inside the image data.

A TIFF format adapter subclasses `TiffAdapter`, says which images are which (`classify`) and
how its text tags are rebuilt (`describe`, `text_tag`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
from pathlib import Path
from typing import Any

from .. import catalog
from ..background import Background
from ..containers.files import (
    DirectWrites,
    PlannedWrites,
    Staging,
    Undo,
    copy_file,
    fsync_dir,
    start_writeback,
    undo_record_for,
)
from ..containers.output import Target, Written
from ..containers.tiff.geometry import decoded_sizes
from ..containers.tiff.names import codec_family, compression_name, tag_name
from ..containers.tiff.reader import ASCII, Ifd, Tag, TiffFile
from ..containers.tiff.writer import IfdOut, NewValue, ascii_value, write_tiff
from ..errors import SlideError
from ..images import codestreams, segments
from ..images.shape import reduced_copy
from ..keyring import Keyring, fingerprint
from ..model import (KEPT, Field, Geometry, Image, Job, Naming, PatchRun, Plan, RedactImage,
                     ReplaceImage, ReplaceRun, Runs)
from ..policy import Policy, decide
from ..sampling import digest, sample
from . import tiff_values
from .base import Adapter, Probe, refuse_shared_bytes

MAX_REPORTED_SEGMENTS = 50
SUBIFDS = 330


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
    rewritten: set[str] = field(default_factory=set)   # IFDs whose image is replaced whole


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
            slide.roles = shaped_roles(slide, self.classify(slide))
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

    def pixels(self, slide: TiffSlide, image: Image):
        import tifffile

        number = int(image.index.split()[1])   # "IFD n": the n-th image of the main chain
        try:
            with tifffile.TiffFile(slide.path) as tf:
                return tf.pages[number].asarray()
        except Exception:  # noqa: BLE001 - a codec tifffile lacks: the caller decides
            return None

    def smallest_level(self, slide: TiffSlide):
        """The smallest stored level (main chain or SubIFD) decoded by tifffile; OpenSlide's
        smallest level when tifffile cannot decode it."""
        import tifffile

        from ..images.likeness import MAX_REFERENCE_PIXELS
        from .base import openslide_smallest_level

        levels = [ifd for ifd, role in zip(slide.tiff.ifds, slide.roles) if role == "level"]
        levels += [kid for ifd in list(levels) for kid in ifd.children.get(SUBIFDS, [])
                   if _sub_level(slide.bo, ifd, kid)]
        if not levels:
            return None
        smallest = min(levels, key=lambda ifd: ifd_size(ifd, slide.bo)[0] * ifd_size(ifd, slide.bo)[1])
        w, h = ifd_size(smallest, slide.bo)
        if w * h > MAX_REFERENCE_PIXELS:
            return openslide_smallest_level(slide.path)
        try:
            with tifffile.TiffFile(slide.path) as tf:
                tf.filehandle.seek(smallest.offset)
                return tifffile.TiffPage(tf, index=0).asarray()
        except Exception:  # noqa: BLE001 - a codec tifffile lacks: try OpenSlide
            return openslide_smallest_level(slide.path)

    def stored_levels(self, slide: TiffSlide) -> list[Image]:
        """Every pyramid image as stored: the levels of the main chain and the reduced copies
        in their SubIFDs (OME-TIFF pyramids), each with its tile grid (None: stripped, as NDPI
        levels are) and byte runs."""
        out = []
        base = slide.tiff.ifds[0]
        for ifd, role in zip(slide.tiff.ifds, slide.roles):
            if role != "level":
                continue
            out.append(self.image_of(slide, ifd, "level", "keep", base))
            for kid in ifd.children.get(SUBIFDS, []):
                if _sub_level(slide.bo, ifd, kid):
                    out.append(self.image_of(slide, kid, "level", "keep", base))
        return out

    def plan(self, slide: TiffSlide, policy: Policy, naming: Naming, screen: bool = True,
             new_images: list = ()) -> Plan:
        ctx = TiffPlanning(slide, policy, naming, screen and policy.deidentify)
        if policy.deidentify:
            plan = self.plan_fields(ctx, new_images)
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

    def plan_fields(self, ctx: TiffPlanning, new_images: list = ()) -> Plan:
        slide, policy = ctx.slide, ctx.policy
        self.prepare(ctx)
        images = self.images(slide)
        chain: list[IfdOut] = []
        for ifd, image in zip(slide.tiff.ifds, images):
            image.action = policy.image_action_for(image.index, image.role)
            if image.action == "replace":
                ctx.rewritten.add(ifd.label)
            if image.action in KEPT:
                chain.append(self.plan_ifd(ctx, ifd, ctx.fields, kept=True))
                continue
            lost: list[Field] = []
            self.plan_ifd(ctx, ifd, lost, kept=False)
            for f in lost:
                f.action, f.new_value = "remove", None
                f.why = f"in the {image.role} image, which is dropped"
            ctx.fields.extend(lost)
        if not any(img.action in KEPT and img.role == "level" for img in images):
            raise SlideError("no pyramid level would remain")
        refuse_shared_bytes(images)
        for new in new_images:
            self._new_image(ctx, new)
        return Plan(self.format_name, images, ctx.fields,
                    self.warnings(slide) + shape_warnings(slide) + ctx.malformed,
                    edits=list(ctx.edits) + list(new_images), output=chain)

    def _new_image(self, ctx: TiffPlanning, new) -> None:
        """A synthesized label or a blanked overview as new strips (or tiles) of its IFD, in
        the IFD's own codec; what screening had planned for that IFD is superseded."""
        from ..images import encode, redact

        slide = ctx.slide
        ifd = slide.tiff.ifds[int(new.image.split()[1])]
        bo = slide.bo
        regions = ifd.data_regions(bo)
        code = ifd.int_value(259, bo, 1)
        codec = {1: "none", 5: "lzw", 6: "jpeg", 7: "jpeg", 8: "deflate", 32946: "deflate"}.get(code)
        if regions is None or codec is None or 322 in ifd.tags:
            raise SlideError(f"{ifd.label}: a {compression_name(code)} image in tiles or "
                             "without strips cannot be rewritten here")
        _, _, offs, cnts = regions
        width, height = ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0
        rows = ifd.int_value(278, bo, height) or height
        colorspace = {2: "rgb", 6: "ycbcr"}.get(ifd.int_value(262, bo, 2), "gray")
        predictor = ifd.int_value(317, bo, 1) or 1
        sub = ifd.tags.get(530)
        subsampling = tuple(int(v) for v in sub.values(bo)[:2]) if sub is not None else (2, 2)
        tables = ifd.tags[347].data if 347 in ifd.tags else None
        painted: list[ReplaceRun] = []
        for i in range(len(offs)):
            top = i * rows
            if top >= height:
                break
            span = min(rows, height - top)
            if isinstance(new, ReplaceImage):
                data = encode.encode(new.pixels[top:top + span], codec, colorspace, predictor,
                                     subsampling if colorspace == "ycbcr" else None)
            else:
                boxes, pixels = new.regions["boxes"], new.regions["_pixels"]
                mask = encode.boxes_mask(boxes, span, width, top)
                if not mask.any():
                    continue
                fill = int(round(float(np.mean(pixels[top:top + span][mask]))))
                stored = slide.tiff.read(int(offs[i]), int(cnts[i]))
                spp = pixels.shape[2] if pixels.ndim == 3 else 1
                try:
                    data = encode.blank_piece(stored, codec, mask, fill, tables, (span, width, spp),
                                              pixels.dtype, colorspace, predictor)
                except redact.RedactError:
                    data = encode.encode(pixels[top:top + span], codec, colorspace, predictor,
                                         subsampling if colorspace == "ycbcr" else None)
            painted.append(ReplaceRun(ifd.label, i, data))
        # what screening planned for this IFD is superseded where the image is rewritten (all
        # of it when replaced); strips a redaction leaves alone keep their cleaning
        gone = {e.run for e in painted}
        ctx.edits[:] = [e for e in ctx.edits if e.image != ifd.label or
                        (isinstance(new, RedactImage) and e.run not in gone)] + painted

    def image_of(self, slide: TiffSlide, ifd: Ifd, role: str, action: str, base: Ifd) -> Image:
        bo = slide.bo
        (width, height), (base_w, base_h) = ifd_size(ifd, bo), ifd_size(base, bo)
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
            # catalog types describe text values; a binary tag's values (and a binary tag
            # stored as text, which its shape check refuses) are checked by its field type,
            # count and own rule (tiff_values.py)
            binary = tag.dtype != ASCII or (entry.tiff_type is not None and "ASCII" not in entry.tiff_type)
            decided = decide(replace(entry, type="binary", grammar=None) if binary else entry,
                             "" if binary else value, ctx.policy, name=name, where=where)
            decided.value = value
            if entry is catalog.UNKNOWN and code >= 32768:
                decided.why = "private tag not in the catalog"
            action = decided.action
            problem = _shape_problem(entry, tag, ifd, slide_bo(ctx)) if action in ("keep", "date") else None
            verdict = (tiff_values.check(entry, tag, ifd, slide_bo(ctx))
                       if action == "keep" and tag.dtype != ASCII and not problem else None)
            if verdict is not None:
                problem = verdict.problem
                fields += [Field(f"{name} (text inside)", where, text, "remove",
                                 why="text inside a binary value; taken out") for text in verdict.texts]
            if problem and entry.required:
                raise SlideError(f"{ifd.label} tag {code} {entry.name}: {problem}; the image cannot "
                                 "be read without it")
            if problem:
                fields.append(Field(name, where, value or _printable(tag) or _as_text(tag),
                                    "remove", why=problem))
                continue
            hidden = _hidden_text(tag) if tag.dtype == ASCII else ""
            if action == "keep" and hidden:
                # Bytes after the string's NUL: no reader shows them, so they are a hiding place.
                node.tags[code] = ascii_value(value)
                fields.append(decided)
                fields.append(Field(f"{name} (after NUL)", where, hidden, "remove",
                                    why="bytes after the end of the string"))
            elif action == "keep" and verdict is not None and verdict.data is not None:
                node.tags[code] = NewValue(tag.dtype, len(verdict.data), verdict.data)
                fields.append(Field(name, where, "", "clean", why=f"{entry.why}; {verdict.note}"))
            elif action == "keep":
                node.tags[code] = tag
                fields.append(decided)
            elif action == "pointer":
                node.tags[code] = tag
                node.children[code] = []
                for kid in ifd.children.get(code, []):
                    if code == SUBIFDS and not _sub_level(ctx.slide.bo, ifd, kid):
                        lost: list[Field] = []
                        self.plan_ifd(ctx, kid, lost, kept=False)
                        for f in lost:
                            f.action, f.new_value = "remove", None
                            f.why = "in a SubIFD image not shaped like a reduced copy of its parent"
                        fields.extend(lost)
                        continue
                    node.children[code].append(self.plan_ifd(ctx, kid, fields, kept))
                if node.children[code]:
                    fields.append(Field(name, where, "", "keep", why=entry.why))
                else:   # the writer leaves out a pointer with nothing left to point at
                    fields.append(Field(name, where, "", "remove", why="nothing it points at is kept"))
            elif action == "date":
                node.tags[code] = ascii_value(decided.new_value)
                fields.append(decided)
            elif action == "clean" and code == 347:
                self._clean_tables(ctx, node, tag, where, fields)
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
    def _clean_tables(ctx: TiffPlanning, node: IfdOut, tag: Tag, where: str,
                      fields: list[Field]) -> None:
        references, frame = _tables_used(ctx, node.source, tag.data)
        try:
            cleaned, removed = segments.clean_jpeg(tag.data, references, frame)
        except segments.MalformedStream as exc:
            raise SlideError(f"{where} JPEGTables: {exc}") from exc
        node.tags[347] = NewValue(tag.dtype, len(cleaned), cleaned) if removed else tag
        for marker, payload in removed:
            fields.append(Field(f"jpeg:{marker}", f"{where} JPEGTables", segments.payload_text(payload),
                                "remove", why=segments.why_removed(
                                    marker, "text segment inside the JPEG tables")))
        fields.append(Field("tiff:JPEGTables", where, "", "clean" if removed else "keep",
                            why="quantisation and Huffman tables"))

    def _clean_codestreams(self, ctx: TiffPlanning, node: IfdOut, fields: list[Field],
                           kept: bool) -> None:
        """Every run of the IFD's image data against its codec's grammar: text segments and
        trailing bytes come out (the run is rewritten); a run the grammar cannot account for,
        or a codec without a grammar here, refuses the slide when the image is kept as stored
        (a dropped image is zeroed, a replaced one rewritten whole)."""
        ifd = node.source
        slide = ctx.slide
        regions = ifd.data_regions(slide.bo)
        if regions is None:
            return
        _, _, offs, cnts = regions
        code = ifd.int_value(259, slide.bo)
        family = codec_family(code)
        as_stored = kept and ifd.label not in ctx.rewritten
        if not codestreams.screened(family):
            if as_stored and (cnts > 0).any():
                raise SlideError(f"{ifd.label}: {compression_name(code)} image data cannot be "
                                 "checked for hidden text; the slide is refused")
            return
        sizes = None
        if family in codestreams.SIZED:
            if not as_stored:   # decoding it would only find what zeroing removes anyway
                return
            sizes = decoded_sizes(ifd, slide.bo, len(offs))
        seen: dict[tuple[str, str], int] = {}
        cleaned: list[ReplaceRun] = []
        for found in codestreams.clean_runs(slide.tiff.fd, slide.tiff.size, offs, cnts, family,
                                            sizes=sizes):
            if isinstance(found, codestreams.Unparseable):
                if as_stored:
                    raise SlideError(f"{ifd.label} run {found.index}: image data outside its "
                                     f"codec's grammar ({found.reason}); the slide is refused")
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
                                "remove", why=segments.why_removed(
                                    marker, "text segment inside the image codestream")))


def _tables_used(ctx: TiffPlanning, ifd: Ifd, tables: bytes
                 ) -> tuple[frozenset[segments.TableKey] | None, tuple[int, int] | None]:
    """The tables of JPEGTables that the IFD's tiles select without defining them themselves,
    and the tiles' frame. The first tile usually selects every table there is; only when it
    does not are all tiles walked."""
    regions = ifd.data_regions(ctx.slide.bo)
    if regions is None:
        return None, None
    _, _, offs, cnts = regions
    live = np.flatnonzero(cnts > 0)
    if live.size == 0:
        return frozenset(), None
    if codec_family(ifd.int_value(259, ctx.slide.bo)) != "jpeg":
        return frozenset(), None      # no tile reads them
    first = ctx.slide.tiff.read(int(offs[live[0]]), int(cnts[live[0]]))
    own, used, frame = segments.stream_tables(first)
    defined = segments.stream_tables(tables)[0]
    if defined <= used - own:     # a table the tile defines itself shadows JPEGTables' one
        return frozenset(used - own), frame
    bits = segments.screen_runs(ctx.slide.tiff.fd, ctx.slide.tiff.size, offs, cnts,
                                segments.table_references, dtype=np.int64)
    return segments.keys_of(int(np.bitwise_or.reduce(bits))), frame


TYPE_NAMES = {1: "BYTE", 2: "ASCII", 3: "SHORT", 4: "LONG", 5: "RATIONAL", 6: "SBYTE",
              7: "UNDEFINED", 8: "SSHORT", 9: "SLONG", 10: "SRATIONAL", 11: "FLOAT", 12: "DOUBLE",
              13: "IFD", 16: "LONG8", 17: "SLONG8", 18: "IFD8"}


def shaped_roles(slide: TiffSlide, roles: list[str]) -> list[str]:
    """Whatever a format's own signals say (a lens tag, an OME Image's declared size, a
    description), an IFD kept as a level or a thumbnail must have the shape of the first
    level, measured from its own ImageWidth and ImageLength: a label or macro photograph
    tagged as a level has its own shape and becomes of unknown role (dropped)."""
    ifds = slide.tiff.ifds
    base = next((i for i, role in enumerate(roles) if role == "level"), None)
    if base is None:
        return roles
    base_size = ifd_size(ifds[base], slide.bo)
    out = list(roles)
    for i, role in enumerate(roles):
        if role in ("level", "thumbnail") and i != base \
                and not reduced_copy(ifd_size(ifds[i], slide.bo), base_size):
            out[i] = "unknown"
            slide.extra.setdefault("misshaped", []).append(f"{ifds[i].label} ({role})")
    return out


def shape_warnings(slide: TiffSlide) -> list[str]:
    misshaped = slide.extra.get("misshaped", [])
    return [f"{', '.join(misshaped)}: said to be a reduced copy of the slide but not shaped like "
            "it (a label or macro photograph?): dropped"] if misshaped else []


def ifd_size(ifd: Ifd, bo: str) -> tuple[int, int]:
    """ImageWidth and ImageLength of an IFD (0 where missing)."""
    return ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0


def _sub_level(bo: str, parent: Ifd, kid: Ifd) -> bool:
    """A SubIFD image is kept only as a reduced resolution of its parent (OME-TIFF pyramids);
    anything else there (a label, a macro) has no role a reader would show."""
    size = (kid.int_value(256, bo, 0) or 0, kid.int_value(257, bo, 0) or 0)
    base = (parent.int_value(256, bo, 0) or 0, parent.int_value(257, bo, 0) or 0)
    return (273 in kid.tags or 324 in kid.tags) and reduced_copy(size, base)


def slide_bo(ctx: TiffPlanning) -> str:
    return ctx.slide.bo


def _shape_problem(entry: catalog.Entry, tag: Tag, ifd: Ifd, bo: str) -> str | None:
    """Why a tag to be kept is not what TIFF 6.0 says it is (its field type, its count), or
    None. A number stored as text, or an array longer than the image needs, can carry text."""
    if entry.tiff_type is None:
        return None
    stored = TYPE_NAMES.get(tag.dtype, str(tag.dtype))
    if stored not in entry.tiff_type:
        return f"stored as {stored}, where the standard says {' or '.join(entry.tiff_type)}"
    allowed = _allowed_counts(entry.count or "any", ifd, bo)
    if allowed is not None and tag.count not in allowed:
        return f"{tag.count} values, where the image needs {' or '.join(map(str, sorted(allowed)))}"
    return None


def _allowed_counts(rule: str, ifd: Ifd, bo: str) -> set[int] | None:
    if rule == "any":
        return None
    if rule.isdigit():
        return {int(rule)}
    spp = ifd.int_value(277, bo, 1) or 1
    bps = ifd.int_value(258, bo, 1) or 1
    if rule == "spp":
        return {1, spp}
    if rule == "extra":
        return set(range(0, spp + 1))
    if rule == "gray":
        return {1 << min(bps, 24)}
    if rule == "colormap":
        return {3 << min(bps, 24)}
    if rule == "transfer":
        return {1 << min(bps, 24), 3 << min(bps, 24)}
    if rule == "runs":
        return {_runs_needed(ifd, bo, spp)}
    return None


def _runs_needed(ifd: Ifd, bo: str, spp: int) -> int:
    width, height = ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0
    planes = spp if ifd.int_value(284, bo, 1) == 2 else 1
    if 322 in ifd.tags:
        tw, th = ifd.int_value(322, bo, 0) or 0, ifd.int_value(323, bo, 0) or 0
        if not tw or not th:
            return -1
        return -(-width // tw) * -(-height // th) * planes
    rows = ifd.int_value(278, bo, 0) or height or 1
    return -(-height // max(1, min(rows, height or rows))) * planes if height else planes


def _as_text(tag: Tag) -> str:
    """What a malformed tag's bytes say, when they say something (searched for in the output)."""
    text = tag.data.decode("latin-1").strip("\x00 ")
    return text if text.isprintable() else ""


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
    the slide is planned), patched when the plan is ready; or the input itself, in place, after
    everything the patch overwrites is saved in an undo record (restored if verification fails,
    or by the next run after a crash)."""

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
            if isinstance(edit, ReplaceRun):   # new images came as runs too
                edits.setdefault(edit.image, {})[edit.run] = edit.data
            elif isinstance(edit, PatchRun):
                patches.setdefault(edit.image, {})[edit.run] = edit.patches
            elif not isinstance(edit, (RedactImage, ReplaceImage)):
                # a RedactImage or ReplaceImage arrives with its runs as ReplaceRun/PatchRun
                raise SlideError(f"cannot write a {type(edit).__name__} into a TIFF")
        if self.staging is None:
            return self._finish_in_place(plan, edits, patches)
        try:
            self.copier.join()
            result = write_tiff(self.slide.tiff, DirectWrites(self.fd), plan.output, edits,
                                patches)
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
        return Written((self.staging.path,), self.staging.release, self.staging.discard,
                       result.zeroed_bytes, {"input_intact": True})

    def _finish_in_place(self, plan: Plan, edits: dict[str, dict[int, bytes]],
                         patches: dict[str, dict[int, tuple]]) -> Written:
        path = self.slide.path
        changed = {label: set(edits.get(label, {})) | set(patches.get(label, {}))
                   for label in set(edits) | set(patches)}
        digests = _run_digests(self.slide, plan, changed)
        undo = Undo(undo_record_for(path))
        fd = os.open(path, os.O_RDWR)
        try:
            planned = PlannedWrites(fd)
            result = write_tiff(self.slide.tiff, planned, plan.output, edits, patches)
            undo.keep_ranges(path, planned.ranges())
            undo.rename(path, self.final)
            undo.seal()
            planned.apply()
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            if (undo.record / "manifest.json").exists():
                undo.restore()
            else:
                undo.discard()
            raise
        os.close(fd)

        def release() -> Path:
            os.replace(path, self.final)
            fsync_dir(self.final.parent)
            return self.final

        return Written((path,), release, undo.restore, result.zeroed_bytes,
                       {"input_intact": False, "digests": digests}, undo=undo.record)

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


def _run_digests(slide: TiffSlide, plan: Plan, changed: dict[str, set[int]]) -> dict:
    """Digests of a spread of every kept image's runs as they are before an in-place patch,
    by IFD label and run: verification compares the patched file with them."""
    out: dict[str, dict[int, str]] = {}
    for root in plan.output:
        for node in root.walk():
            regions = node.source.data_regions(slide.bo)
            if regions is None:
                continue
            _, _, offs, cnts = regions
            label = node.source.label
            out[label] = {i: digest(slide.tiff.read(int(offs[i]), int(cnts[i])))
                          for i in sample(cnts, changed.get(label, set()))
                          if i not in changed.get(label, set())}
    return out
