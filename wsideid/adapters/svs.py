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
from ..images.shape import reduced_copy
from ..model import Field
from ..policy import decide, repeat_field, repeated_keys
from .tiff import TiffAdapter, TiffPlanning, TiffSlide

# The header's grammar (Aperio's data interchange note as OpenSlide reads it, and the lines
# seen in ScanScope, GT450 and ImageServer files): a product line, then a geometry line, per
# ';'-joined part. A line keeps the longest start that the grammar allows; the rest goes.
_DIM = r"\d+x\d+"
_CODEC = r"(?:JPEG|J2K|JP2K|LZW|RAW|NONE|DEFLATE)(?:/(?:RGB|YCC|YCbCr|YUV16|KDU|RAW))?"
HEADER_LINE = re.compile(rf"""(?x)
    Aperio(?:\ (?:Image\ Library|Leica\ Biosystems(?:\ GT\d{{2,4}}(?:\ DX)?)?|ImageServer
                |Format|ScanScope(?:\ (?:AT2?|CS2?|XT|FL|GT\d{{2,4}}))?|Versa))?
          (?:\ v\d+(?:\.\d+)*[a-z]?)?(?:\ \(fake\))?\ ?
  | (?:label|macro|thumbnail)\ {_DIM}\ ?
  | {_DIM}(?:\ \[\d+,\d+[,\ ]{_DIM}\])?(?:\ \({_DIM}\))?(?:\ ->\ {_DIM})?(?:\ -)?
          (?:\ {_CODEC})?(?:\ Q=\d+)?\ ?
""")
LINE_SPLIT = re.compile(r"(\r\n|\r|\n)")
LABEL_KEYS = ("Barcode", "Slide", "SlideID", "Slide ID", "Barcode Value")


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
    """Keep of every header line the start the grammar allows; returns the header and what
    was dropped (line by line)."""
    dropped: list[str] = []
    out_parts = []
    for part in header.split(";"):
        pieces = LINE_SPLIT.split(part)
        for i in range(0, len(pieces), 2):
            line = pieces[i]
            match = HEADER_LINE.match(line)
            kept = match.group(0) if match else ""
            rest = line[len(kept):]
            if rest.strip():
                dropped.append(rest.strip())
                pieces[i] = kept.rstrip()
        out_parts.append("".join(pieces))
    return ";".join(out_parts), dropped


def _second_line(ifd: Ifd) -> str:
    lines = LINE_SPLIT.split(ifd.text(270) or "")[2::2]
    return lines[0].strip() if lines else ""


def _role(ifd: Ifd, index: int, bo: str, base_size: tuple[int, int]) -> str:
    line = _second_line(ifd)
    word = line.split(" ", 1)[0].lower()
    subfile = ifd.int_value(254, bo, 0) or 0
    tiled = 322 in ifd.tags
    size = (ifd.int_value(256, bo, 0) or 0, ifd.int_value(257, bo, 0) or 0)
    header = (ifd.text(270) or "").split("|", 1)[0]     # the keys after it name other things
    words = {w.lower().strip(";,") for w in header.split()}
    if word == "label" or ({"label", "barcode"} & words and not tiled):
        return "label"
    if word == "macro" or subfile == 9 or ("macro" in words and not tiled):
        return "macro"
    if tiled:   # a tiled image not shaped like level 0 is no level, whatever it says
        return "level" if index == 0 or reduced_copy(size, base_size) else "unknown"
    # GT450: a label has NewSubfileType 1 and an empty description
    if subfile & 1 and not line:
        return "label"
    if index > 0 and "->" in line and reduced_copy(size, base_size) and size[0] < base_size[0]:
        return "thumbnail"
    return "unknown"


class SvsAdapter(TiffAdapter):
    name = "aperio-svs"
    order = 300
    extension = ".svs"

    def claims(self, tiff: TiffFile) -> bool:
        return is_aperio(tiff)

    def classify(self, slide: TiffSlide) -> list[str]:
        """Every signal the format gives decides (the description's second line, NewSubfileType,
        tiling, size and shape against level 0), and where they disagree the more dangerous
        role wins: an image that says label anywhere is a label, whatever its position."""
        bo = slide.bo
        base = slide.tiff.ifds[0]
        base_size = (base.int_value(256, bo, 0) or 0, base.int_value(257, bo, 0) or 0)
        return [_role(ifd, i, bo, base_size) for i, ifd in enumerate(slide.tiff.ifds)]

    def label_values(self, slide: TiffSlide) -> list[str]:
        """The label's barcode and the slide identifiers Aperio writes beside it."""
        values = []
        for ifd in slide.tiff.ifds:
            _, pairs = split_description(ifd.text(270) or "")
            values += [v for k, v in pairs if v and k in LABEL_KEYS]
        return sorted(set(values))

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
                                why="header text the Aperio header grammar does not allow"))
        fields.append(Field("aperio:header", f"{where} header", "", "keep",
                            why="product line and geometry; OpenSlide detects Aperio by it"))
        out = [new_header]
        fields_catalog = catalog.load("aperio-svs")
        ambiguous, copies = repeated_keys(pairs)
        for i, (key, value) in enumerate(pairs):
            repeat = repeat_field(f"aperio:{key}", where, key, value, i, ambiguous, copies)
            if repeat is not None:
                fields.append(repeat)
                continue
            field = decide(fields_catalog.lookup(key), value, ctx.policy, name=f"aperio:{key}",
                           where=where)
            fields.append(field)
            if field.action == "keep":
                out.append(f"{key} = {value}")
            elif field.action == "date":
                out.append(f"{key} = {field.new_value}")
        return "|".join(out), fields


ADAPTER = SvsAdapter()
