"""What every TIFF-based format shares: planning standard tags, child IFDs and codestreams.

A format adapter subclasses `TiffSlide`, says which images are which (`classify`) and how
its ImageDescription is rebuilt (`describe`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from .. import catalog
from ..errors import SlideError
from ..images import segments
from ..model import Field, Image, Plan
from ..policy import Policy
from ..pseudonym import transform_date
from ..tiff.reader import ASCII, Ifd, Tag, TiffFile
from ..tiff.writer import IfdOut, NewValue, ascii_value

JPEG_CODECS = {6, 7}  # 6: old-style JPEG (JPEGInterchangeFormat streams)
J2K_CODECS = {33003, 33004, 33005, 34712}
MAX_REPORTED_SEGMENTS = 50


def compression_name(code: int | None) -> str:
    if code is None:
        return "none"
    try:
        return tifffile.COMPRESSION(code).name.lower()
    except ValueError:
        return str(code)


def tag_name(code: int) -> str:
    name = tifffile.TIFF.TAGS.get(code)
    return name if isinstance(name, str) else f"Tag{code}"


class TiffSlide:
    """A slide stored in one TIFF container."""

    format = "tiff"
    extension = ".tif"

    def __init__(self, path: Path, tiff: TiffFile | None = None):
        self.path = Path(path)
        self.tiff = tiff or TiffFile(path)
        self.bo = self.tiff.byteorder
        self.tags_catalog = catalog.load("tiff-tags")
        self.vendor_tags: catalog.Catalog | None = None  # a format's private tags
        self.roles = self.classify()
        self.malformed: list[str] = []
        self.scan_codestreams = True

    def close(self) -> None:
        self.tiff.close()

    # ---- what an adapter says about its format -----------------------------------------
    def classify(self) -> list[str]:
        """Role of each IFD of the main chain."""
        roles = []
        for i, ifd in enumerate(self.tiff.ifds):
            subfile = ifd.int_value(254, self.bo, 0) or 0
            roles.append("level" if i == 0 or subfile & 1 and 324 in ifd.tags else "unknown")
        return roles

    def describe(self, ifd: Ifd, text: str, policy: Policy) -> tuple[str | None, list[Field]]:
        """New ImageDescription (None: remove it) and the fields found inside it."""
        return None, [Field("tiff:ImageDescription", f"{ifd.label} tag 270", text, "remove",
                            why="unrecognised description; removed")]

    def warnings(self) -> list[str]:
        return []

    # ---- plan --------------------------------------------------------------------------
    def plan(self, policy: Policy, scan_codestreams: bool = True) -> tuple[Plan, list[IfdOut]]:
        fields: list[Field] = []
        images: list[Image] = []
        chain: list[IfdOut] = []
        self.malformed = []
        self.scan_codestreams = scan_codestreams
        for ifd, role in zip(self.tiff.ifds, self.roles):
            action = policy.image_action(role)
            images.append(self.image_of(ifd, role, action))
            if action == "keep":
                chain.append(self.plan_ifd(ifd, policy, fields))
                continue
            lost: list[Field] = []
            self.plan_ifd(ifd, policy, lost)
            for f in lost:
                f.action, f.new_value = "remove", None
                f.why = f"in the {role} image, which is dropped"
            fields.extend(lost)
        if not any(img.action == "keep" and img.role == "level" for img in images):
            raise SlideError("no pyramid level would remain")
        return Plan(self.format, images, fields, self.warnings() + self.malformed), chain

    def image_of(self, ifd: Ifd, role: str, action: str) -> Image:
        return Image(ifd.label, role, ifd.int_value(256, self.bo, 0) or 0,
                     ifd.int_value(257, self.bo, 0) or 0,
                     compression_name(ifd.int_value(259, self.bo)), action)

    def plan_ifd(self, ifd: Ifd, policy: Policy, fields: list[Field]) -> IfdOut:
        node = IfdOut(ifd, {})
        for code, tag in ifd.tags.items():
            entry = self.tag_entry(code)
            name = f"tiff:{entry.name if entry is not catalog.UNKNOWN else tag_name(code)}"
            where = f"{ifd.label} tag {code}"
            value = tag.text() if tag.dtype == ASCII else ""
            action = policy.field_action(entry.action)
            why = entry.why
            if entry is catalog.UNKNOWN:
                why = ("private tag not in the catalog" if code >= 32768 else entry.why)
            if action == "keep" and tag.dtype == ASCII and _hidden_text(tag):
                # Bytes after the string's NUL: no reader shows them, so they are a hiding place.
                node.tags[code] = ascii_value(value)
                fields.append(Field(name, where, value, "keep", why=why))
                fields.append(Field(f"{name} (after NUL)", where, _hidden_text(tag), "remove",
                                    why="bytes after the end of the string"))
            elif action == "keep":
                node.tags[code] = tag
                fields.append(Field(name, where, value, "keep", why=why))
            elif action == "pointer":
                node.tags[code] = tag
                node.children[code] = [self.plan_ifd(kid, policy, fields)
                                       for kid in ifd.children.get(code, [])]
                fields.append(Field(name, where, "", "keep", why=why))
            elif action == "date":
                new = transform_date(value, policy.dates, policy.date_shift_days)
                if new is None:
                    fields.append(Field(name, where, value, "remove", why=why + " (not a date)"))
                else:
                    node.tags[code] = ascii_value(new)
                    fields.append(Field(name, where, value, "date", new, why=why))
            elif action == "clean" and code == 347:
                self._clean_tables(node, tag, where, fields)
            elif action in ("description", "properties"):
                self._describe(node, ifd, tag, policy, fields)
            else:
                fields.append(Field(name, where, value or self._printable(tag), "remove", why=why))
                for kid in ifd.children.get(code, []):
                    self._collect_removed(kid, fields)
        for dup in ifd.duplicates:
            fields.append(Field(f"tiff:{tag_name(dup.code)}", f"{ifd.label} tag {dup.code} (repeated)",
                                dup.text() if dup.dtype == ASCII else "", "remove",
                                why="second copy of a tag; readers see only the first"))
        if self.scan_codestreams:
            self._clean_codestreams(node, fields)
        return node

    # ---- pieces ------------------------------------------------------------------------
    @staticmethod
    def _printable(tag: Tag) -> str:
        if tag.dtype in (1, 7) and tag.code in (700, 33723, 34377):
            return tag.data.decode("utf-8", errors="ignore").strip("\x00")
        return ""

    def _collect_removed(self, ifd: Ifd, fields: list[Field]) -> None:
        """Text values inside a removed child IFD (EXIF, GPS), reported and searched for."""
        for code, tag in ifd.tags.items():
            if tag.dtype == ASCII or code == 37510:
                fields.append(Field(f"{ifd.kind}:{tag_name(code)}", f"{ifd.label} tag {code}",
                                    tag.data.decode("latin-1").strip("\x00 "), "remove",
                                    why=f"inside the removed {ifd.kind.upper()} IFD"))
        for kids in ifd.children.values():
            for kid in kids:
                self._collect_removed(kid, fields)

    def tag_entry(self, code: int) -> catalog.Entry:
        if self.vendor_tags is not None and self.vendor_tags.knows(code):
            return self.vendor_tags.lookup(code)
        return self.tags_catalog.lookup(code)

    def text_tag(self, ifd: Ifd, code: int, text: str, policy: Policy) -> tuple[str | None, list[Field]]:
        """A text tag that holds fields of its own (ImageDescription, vendor property text)."""
        if code == 270:
            return self.describe(ifd, text, policy)
        return None, [Field(f"tiff:{tag_name(code)}", f"{ifd.label} tag {code}", text, "remove",
                            why="no parser for this text")]

    def _describe(self, node: IfdOut, ifd: Ifd, tag: Tag, policy: Policy,
                  fields: list[Field]) -> None:
        text = tag.text()
        new, found = self.text_tag(ifd, tag.code, text, policy)
        fields.extend(found)
        hidden = _hidden_text(tag) if tag.dtype == ASCII else ""
        if hidden:
            fields.append(Field(f"tiff:{tag_name(tag.code)} (after NUL)", f"{ifd.label} tag {tag.code}",
                                hidden, "remove", why="bytes after the end of the string"))
        if new is None:
            return
        if new == text and tag.dtype == ASCII and not _hidden_text(tag):
            node.tags[tag.code] = tag
        else:
            node.tags[tag.code] = ascii_value(new)

    def _clean_tables(self, node: IfdOut, tag: Tag, where: str, fields: list[Field]) -> None:
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

    def _clean_codestreams(self, node: IfdOut, fields: list[Field]) -> None:
        ifd = node.source
        regions = ifd.data_regions(self.bo)
        codec = ifd.int_value(259, self.bo)
        if regions is None or codec not in JPEG_CODECS | J2K_CODECS:
            return
        _, _, offs, cnts = regions
        if codec in JPEG_CODECS:
            screen, clean = segments.screen_jpeg, segments.clean_jpeg
        else:
            screen, clean = segments.screen_j2k, segments.clean_j2k
        flagged = np.nonzero(segments.screen_runs(self.tiff.fd, self.tiff.size, offs, cnts, screen))[0]
        seen: dict[tuple[str, str], int] = {}
        for index in flagged.tolist():
            data = self.tiff.read(int(offs[index]), int(cnts[index]))
            try:
                cleaned, removed = clean(data)
            except segments.MalformedStream as exc:
                self.malformed.append(f"{ifd.label} run {index}: unparseable codestream left as is ({exc})")
                continue
            if not removed:
                continue
            node.data_edits[index] = cleaned
            trailing = sum(len(p) for m, p in removed if m == "trailing data")
            node.header_shifts[index] = len(data) - len(cleaned) - trailing
            for marker, payload in removed:
                key = (marker, segments.payload_text(payload))
                seen[key] = seen.get(key, 0) + 1
        for (marker, text), n in list(seen.items())[:MAX_REPORTED_SEGMENTS]:
            fields.append(Field(f"codestream:{marker}", f"{ifd.label} image data ({n} runs)", text,
                                "remove", why="text segment inside the image codestream"))



def _hidden_text(tag: Tag) -> str:
    """Non-zero bytes after the first NUL of an ASCII value (a second string, or residue)."""
    _, _, rest = tag.data.partition(b"\x00")
    rest = rest.strip(b"\x00")
    return rest.decode("latin-1") if rest else ""
