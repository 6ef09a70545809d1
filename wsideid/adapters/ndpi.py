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
from ..containers.tiff.reader import Ifd, TiffFile
from ..containers.tiff.writer import IfdOut, array_value
from ..errors import SlideError
from ..model import Field, ReplaceRun
from ..policy import decide, repeat_field, repeated_keys
from .tiff import TiffAdapter, TiffPlanning, TiffSlide

LINE = re.compile(r"(\r\n|\r|\n)")
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def is_ndpi(tiff: TiffFile) -> bool:
    return 65420 in tiff.ifds[0].tags


class NdpiAdapter(TiffAdapter):
    name = "hamamatsu-ndpi"
    no_label = ("NDPI has no label image: the label is part of the macro photograph "
                "(--macro redact keeps the macro with its label area blanked)")
    order = 100
    extension = ".ndpi"

    def claims(self, tiff: TiffFile) -> bool:
        return is_ndpi(tiff)

    def vendor_tags(self) -> catalog.Catalog:
        return catalog.load("hamamatsu-ndpi", "tags")

    def classify(self, slide: TiffSlide) -> list[str]:
        roles = []
        for ifd in slide.tiff.ifds:
            tag = ifd.tags.get(65421)
            lens = float(tag.values(slide.bo)[0]) if tag is not None and tag.count else None
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

    def label_values(self, slide: TiffSlide) -> list[str]:
        """The slide's Reference (tag 65427: the label's text or barcode), from every IFD."""
        return sorted({ifd.text(65427).strip() for ifd in slide.tiff.ifds
                       if ifd.text(65427) and ifd.text(65427).strip()})

    def label_boxes(self, slide: TiffSlide, image, pixels) -> list[tuple[int, int, int, int]]:
        """The barcode region NDP.scan stores (roi.barcode.macro), placed in the macro."""
        from ..images.overview import ndpi_label_box

        if image.role != "macro":
            return []
        return ndpi_label_box(property_values(slide.tiff.ifds[0].text(65449) or ""), pixels)

    def text_tag(self, ctx: TiffPlanning, ifd: Ifd, code: int,
                 text: str) -> tuple[str | None, list[Field]]:
        if code == 65449:
            return self.plan_properties(ctx, ifd, text)
        if code == 270:
            # NDP.scan writes no ImageDescription; one added by another tool is not trusted.
            return None, [Field("tiff:ImageDescription", f"{ifd.label} tag 270", text, "remove",
                                why="not written by NDP.scan; removed")]
        return super().text_tag(ctx, ifd, code, text)

    def plan_properties(self, ctx: TiffPlanning, ifd: Ifd, text: str) -> tuple[str, list[Field]]:
        where = f"{ifd.label} tag 65449"
        raw = ifd.tags[65449].data.rstrip(b"\x00")
        if CONTROL.search(raw) or "\ufffd" in text:
            raise SlideError(f"{where}: property text is corrupt (binary data or invalid UTF-8)")
        properties = catalog.load("hamamatsu-ndpi", "properties")
        pieces = LINE.split(text)
        out: list[str] = []
        fields: list[Field] = []
        ambiguous, copies = repeated_keys([_key_value(line) for line in pieces[::2] if line])
        named = 0
        for i in range(0, len(pieces), 2):
            line, sep = pieces[i], (pieces[i + 1] if i + 1 < len(pieces) else "")
            if not line:
                out.append(sep)
                continue
            key, eq, value = line.partition("=")
            repeat = repeat_field(f"ndpi:{key}", where, key, value if eq else None, named,
                                  ambiguous, copies)
            named += 1
            if repeat is not None:
                fields.append(repeat)
                continue
            field = decide(properties.lookup(key), value if eq else None, ctx.policy,
                           name=f"ndpi:{key}", where=where)
            fields.append(field)
            if field.action == "keep":
                out.append(line + sep)
            elif field.action == "date":
                out.append(f"{key}={field.new_value}{sep}")
        return "".join(out), fields

    def paint_target(self, ctx: TiffPlanning, node: IfdOut, role: str, level: int | None,
                     base: tuple[int, int]):
        """A level is one JPEG with restart intervals: only the touched intervals change."""
        codec = node.source.int_value(259, ctx.slide.bo)
        regions = node.source.data_regions(ctx.slide.bo)
        if role == "level" and codec == 7 and regions is not None and len(regions[2]) == 1:
            from . import ndpi_regions

            return ndpi_regions.level_target(ctx, node, role, level, base)
        return super().paint_target(ctx, node, role, level, base)

    def after_cleaning(self, ctx: TiffPlanning, node: IfdOut, cleaned: list[ReplaceRun]) -> None:
        """MCU starts are offsets inside the level JPEG; removing header segments moves them."""
        shifted = [edit for edit in cleaned if edit.header_shift]
        if not shifted or 65426 not in node.tags:
            return
        if len(shifted) != 1 or shifted[0].run != 0:
            raise SlideError(f"{node.source.label}: unexpected NDPI strip layout")
        bo = ctx.slide.bo
        low = node.source.tags[65426]
        starts = low.values(bo).astype(np.int64)
        high = node.source.tags.get(65432)
        if high is not None:
            starts = starts + (high.values(bo).astype(np.int64) << 32)
        starts = starts - shifted[0].header_shift
        if (starts < 0).any():
            raise SlideError(f"{node.source.label}: MCU starts point into the JPEG header")
        node.tags[65426] = array_value(low.dtype, starts & 0xFFFFFFFF, bo)
        if high is not None:
            node.tags[65432] = array_value(high.dtype, starts >> 32, bo)


def property_values(text: str) -> dict[str, str]:
    """The NDPI property text (tag 65449) as key -> value (the last of a repeated key)."""
    return dict(line.split("=", 1) for line in LINE.split(text)[::2] if "=" in line)


def _key_value(line: str) -> tuple[str, str | None]:
    key, eq, value = line.partition("=")
    return key, value if eq else None


ADAPTER = NdpiAdapter()
