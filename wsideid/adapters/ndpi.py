"""Hamamatsu NDPI.

A TIFF marked by private tag 65420 (64-bit offsets handled by the TIFF reader and writer).
Each IFD is one image: a pyramid level (SourceLens 65421 > 0, one JPEG with restart markers,
MCU starts in 65426), the macro photograph (SourceLens -1, shows the slide label) or the map
(-2). There is no separate label image. Private tags repeat in every IFD and often share their
values; the property text 65449 is `key=value` lines (CRLF), followed by a shading block of
`;key=value` lines separated by CR (OpenSlide openslide-vendor-hamamatsu.c reads 65449 as
`hamamatsu.*` properties).
"""
from __future__ import annotations

import re

import numpy as np

from .. import catalog
from ..errors import SlideError
from ..model import Field
from ..policy import Policy
from ..pseudonym import transform_date
from ..tiff.reader import Ifd, TiffFile
from ..tiff.writer import IfdOut, array_value
from .tiffbase import TiffSlide

LINE = re.compile(r"(\r\n|\r|\n)")
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
NUMBERS = re.compile(r"[-+0-9.,:%eE /_]*")


def is_ndpi(tiff: TiffFile) -> bool:
    return 65420 in tiff.ifds[0].tags


class NdpiSlide(TiffSlide):
    format = "hamamatsu-ndpi"
    extension = ".ndpi"

    def __init__(self, path, tiff=None):
        super().__init__(path, tiff)
        self.vendor_tags = catalog.load("hamamatsu-ndpi", "tags")
        self.properties = catalog.load("hamamatsu-ndpi", "properties")

    def classify(self) -> list[str]:
        roles = []
        for ifd in self.tiff.ifds:
            tag = ifd.tags.get(65421)
            lens = float(tag.values(self.bo)[0]) if tag is not None and tag.count else None
            if lens is None:
                roles.append("unknown")
            elif lens > 0:
                roles.append("level")
            elif lens == -1:
                roles.append("macro")
            elif lens == -2:
                roles.append("map")
            else:
                roles.append("unknown")
        return roles

    def text_tag(self, ifd: Ifd, code: int, text: str, policy: Policy) -> tuple[str | None, list[Field]]:
        if code == 65449:
            return self.plan_properties(ifd, text, policy)
        if code == 270:
            # NDP.scan writes no ImageDescription; one added by another tool is not trusted.
            return None, [Field("tiff:ImageDescription", f"{ifd.label} tag 270", text, "remove",
                                why="not written by NDP.scan; removed")]
        return super().text_tag(ifd, code, text, policy)

    def plan_properties(self, ifd: Ifd, text: str, policy: Policy) -> tuple[str | None, list[Field]]:
        where = f"{ifd.label} tag 65449"
        raw = ifd.tags[65449].data.rstrip(b"\x00")
        if CONTROL.search(raw) or "\ufffd" in text:
            raise SlideError(f"{where}: property text is corrupt (binary data or invalid UTF-8)")
        pieces = LINE.split(text)
        out: list[str] = []
        fields: list[Field] = []
        for i in range(0, len(pieces), 2):
            line, sep = pieces[i], (pieces[i + 1] if i + 1 < len(pieces) else "")
            if not line:
                out.append(sep)
                continue
            key, eq, value = line.partition("=")
            field = self._plan_property(key, value if eq else None, where, policy)
            fields.append(field)
            if field.action == "keep":
                out.append(line + sep)
            elif field.action == "date":
                out.append(f"{key}={field.new_value}{sep}")
        return "".join(out), fields

    def _plan_property(self, key: str, value: str | None, where: str, policy: Policy) -> Field:
        name = f"ndpi:{key}"
        entry = self.properties.lookup(key)
        action = policy.field_action(entry.action)
        if value is None:
            # A bare line: only known markers (the shading block header) survive.
            return Field(name, where, key, action if entry is not catalog.UNKNOWN else "remove",
                         why=entry.why, known=entry is not catalog.UNKNOWN)
        if action == "keep" and entry.type == "numbers" and not NUMBERS.fullmatch(value):
            return Field(name, where, value, "remove", why="value is not numeric")
        if action == "date":
            new = transform_date(value, policy.dates, policy.date_shift_days)
            if new is None:
                return Field(name, where, value, "remove", why=entry.why + " (not a date)")
            return Field(name, where, value, "date", new, why=entry.why)
        return Field(name, where, value, action, why=entry.why, known=entry is not catalog.UNKNOWN)

    def plan_ifd(self, ifd: Ifd, policy: Policy, fields: list[Field]) -> IfdOut:
        node = super().plan_ifd(ifd, policy, fields)
        if node.header_shifts and 65426 in node.tags:
            self._shift_mcu_starts(node)
        return node

    def _shift_mcu_starts(self, node: IfdOut) -> None:
        """MCU starts are offsets inside the level JPEG; removing header segments moves them."""
        if len(node.header_shifts) != 1 or 0 not in node.header_shifts:
            raise SlideError(f"{node.source.label}: unexpected NDPI strip layout")
        shift = node.header_shifts[0]
        low = node.source.tags[65426]
        starts = low.values(self.bo).astype(np.int64)
        high = node.source.tags.get(65432)
        if high is not None:
            starts = starts + (high.values(self.bo).astype(np.int64) << 32)
        starts = starts - shift
        if (starts < 0).any():
            raise SlideError(f"{node.source.label}: MCU starts point into the JPEG header")
        node.tags[65426] = array_value(low.dtype, starts & 0xFFFFFFFF, self.bo)
        if high is not None:
            node.tags[65432] = array_value(high.dtype, starts >> 32, self.bo)
