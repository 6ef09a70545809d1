"""Aperio SVS.

ImageDescription (every IFD): a header of one or more `;`-joined parts, each a product line
(`Aperio Image Library v11.2.1`) and a geometry line (`46000x32914 [0,100 46000x32914]
(256x256) JPEG/RGB Q=30`, or `label 387x463` for associated images), then `|key = value`
pairs. OpenSlide detects the format by the leading "Aperio", reads `aperio.*` properties from
IFD 0's pairs, and names associated images by the first word of the description's second line.

IFD order (Aperio data interchange note, as OpenSlide documents it): level 0 (tiled),
thumbnail (stripped, IFD 1), further tiled levels, then label and macro (stripped). GT450 leaves
label/macro descriptions empty and marks them with NewSubfileType 1 (label) and 9 (macro).
"""
from __future__ import annotations

import re

from .. import catalog
from ..containers.tiff.reader import Ifd, TiffFile
from ..model import Field
from ..policy import decide
from .tiff import TiffAdapter, TiffPlanning, TiffSlide

HEADER_TOKEN = re.compile(r"""(?x)
    Aperio|Image|Library|Leica|Biosystems|ImageServer|ScanScope|Format|Versa|
    GT\d{2,4}|AT2?|CS2?|DX|v\d+(?:\.\d+)*[a-z]?|\(fake\)|
    \d+x\d+|\[\d+,\d+|\d+x\d+\]|\[\d+,\d+,\d+x\d+\]|\(\d+x\d+\)|->|-|
    (?:JPEG|J2K|JP2K|LZW|RAW|NONE|DEFLATE)(?:/(?:RGB|YCC|YCbCr|KDU|RAW))?|Q=\d+|
    label|macro|thumbnail
""")
LINE_SPLIT = re.compile(r"(\r\n|\r|\n)")


def is_aperio(tiff: TiffFile) -> bool:
    text = tiff.ifds[0].text(270)
    return bool(text) and text.startswith("Aperio")


def split_description(text: str) -> tuple[str, list[tuple[str, str | None]]]:
    header, *parts = text.split("|")
    pairs: list[tuple[str, str | None]] = []
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            pairs.append((key.strip(), value.strip()))
        else:
            pairs.append((part.strip(), None))
    return header, pairs


def clean_header(header: str) -> tuple[str, list[str]]:
    """Keep only known header tokens; returns the header and the tokens that were dropped."""
    dropped: list[str] = []
    out_parts = []
    for part in header.split(";"):
        pieces = LINE_SPLIT.split(part)
        for i in range(0, len(pieces), 2):
            tokens = pieces[i].split(" ")
            kept = [t for t in tokens if t == "" or HEADER_TOKEN.fullmatch(t)]
            dropped += [t for t in tokens if t and not HEADER_TOKEN.fullmatch(t)]
            if len(kept) != len(tokens):
                pieces[i] = " ".join(t for t in kept if t)
        out_parts.append("".join(pieces))
    return ";".join(out_parts), dropped


class SvsAdapter(TiffAdapter):
    name = "aperio-svs"
    order = 300
    extension = ".svs"

    def claims(self, tiff: TiffFile) -> bool:
        return is_aperio(tiff)

    def classify(self, slide: TiffSlide) -> list[str]:
        roles = []
        for i, ifd in enumerate(slide.tiff.ifds):
            if 322 in ifd.tags:
                roles.append("level")
            elif i == 1:
                roles.append("thumbnail")
            else:
                roles.append(self._associated_role(ifd, slide.bo))
        return roles

    @staticmethod
    def _associated_role(ifd: Ifd, bo: str) -> str:
        lines = [line for line in LINE_SPLIT.split(ifd.text(270) or "")[2::2]]
        word = lines[0].split(" ", 1)[0].strip().lower() if lines else ""
        if word in ("label", "macro"):
            return word
        subfile = ifd.int_value(254, bo, 0) or 0
        if subfile == 9:
            return "macro"
        if subfile == 1:
            return "label"
        return "unknown"

    def describe(self, ctx: TiffPlanning, ifd: Ifd, text: str) -> tuple[str | None, list[Field]]:
        where = f"{ifd.label} ImageDescription"
        if not text.startswith("Aperio"):
            if not text.strip():
                return text, []
            return None, [Field("aperio:description", where, text, "remove",
                                why="not an Aperio description")]
        header, pairs = split_description(text)
        fields: list[Field] = []
        new_header, dropped = clean_header(header)
        for token in dropped:
            fields.append(Field("aperio:header", f"{where} header", token, "remove",
                                why="header token that is not a product name, size or codec"))
        fields.append(Field("aperio:header", f"{where} header", "", "keep",
                            why="product line and geometry; OpenSlide detects Aperio by it"))
        out = [new_header]
        fields_catalog = catalog.load("aperio-svs")
        for key, value in pairs:
            field = decide(fields_catalog.lookup(key), value, ctx.policy, name=f"aperio:{key}",
                           where=where)
            fields.append(field)
            if field.action == "keep":
                out.append(f"{key} = {value}")
            elif field.action == "date":
                out.append(f"{key} = {field.new_value}")
        return "|".join(out), fields


ADAPTER = SvsAdapter()
