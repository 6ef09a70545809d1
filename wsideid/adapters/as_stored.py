"""Plans that keep a slide as it is stored (`wsideid redact`: the policy's `deidentify` is
off). Every field is listed as kept and written back unchanged, every image is kept, nothing
is screened; only the region edits change the slide. The output goes through the same
writer and verification as a de-identified one (which then expect nothing removed)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import catalog
from ..containers.tiff.names import tag_name
from ..containers.tiff.reader import ASCII, Ifd
from ..containers.tiff.writer import IfdOut
from ..model import Field, Plan

if TYPE_CHECKING:
    from .tiff import TiffAdapter, TiffPlanning

KEPT = "kept as stored (redact only)"


def plan_tiff(adapter: TiffAdapter, ctx: TiffPlanning) -> Plan:
    """Every IFD (its children too) with every tag as it is. A repeated tag cannot be
    written back (an IFD holds each code once): it is the one thing removed, as in `deid`."""
    images = adapter.images(ctx.slide)
    for image in images:
        image.action = "keep"
    fields: list[Field] = []
    chain = [_as_is(adapter, ifd, fields) for ifd in ctx.slide.tiff.ifds]
    return Plan(adapter.format_name, images, fields, adapter.warnings(ctx.slide), output=chain)


def _as_is(adapter: TiffAdapter, ifd: Ifd, fields: list[Field]) -> IfdOut:
    node = IfdOut(ifd, dict(ifd.tags))
    for code, tag in ifd.tags.items():
        entry = adapter.tag_entry(code)
        name = entry.name if entry is not catalog.UNKNOWN else tag_name(code)
        fields.append(Field(f"tiff:{name}", f"{ifd.label} tag {code}",
                            tag.text() if tag.dtype == ASCII else "", "keep", why=KEPT))
    for dup in ifd.duplicates:
        fields.append(Field(f"tiff:{tag_name(dup.code)}", f"{ifd.label} tag {dup.code} (repeated)",
                            dup.text() if dup.dtype == ASCII else "", "remove",
                            why="second copy of a tag; readers see only the first"))
    for code, kids in ifd.children.items():
        node.children[code] = [_as_is(adapter, kid, fields) for kid in kids]
    return node


def plan_mirax(adapter, slide) -> tuple[Plan, list, list]:
    """Slidedat.ini with every key (only the data and index file names follow what the
    writer writes: DataNNNN.dat, Index.dat), every record, every data file byte a record or
    the file header uses. Returns the plan and the hierarchical and non-hierarchical records
    (Index.dat is built from them once the regions are painted)."""
    from ..containers.mirax.data import DataFileOut, MiraxOutput
    from ..containers.mirax.slidedat import DATAFILE, HIERARCHICAL, INDEX_NAME, Slidedat, \
        data_file_name
    from ..model import Geometry, Image, Runs

    def _runs(record, codec: str) -> Runs:   # as mrxs.py builds them (not imported: a cycle)
        items = list(record.items()) if record else []
        return Runs(np.array([i[-1] for i in items], np.int64),
                    np.array([i[-3] for i in items], np.int64),
                    np.array([i[-2] for i in items], np.int64), codec)

    fields: list[Field] = []
    images: list[Image] = []
    dimensions = slide.level_dimensions()
    base_w, base_h = dimensions[0]
    for n, ((w, h), section) in enumerate(zip(dimensions, slide.level_sections)):
        codec = slide.ini.value(section, "IMAGE_FORMAT")
        images.append(Image(f"zoom level {n}", "level", w, h, codec, "keep",
                            Geometry(n, (base_w / w if w else 0.0, base_h / h if h else 0.0)),
                            _runs(slide.index.hier[n], codec.lower())))
    records = catalog.load("mirax", "records")
    nonhier = []
    for value in slide.nonhier_values():
        entry = records.lookup(value.key)
        role = entry.action if entry is not catalog.UNKNOWN else "unknown"
        if role in adapter.image_roles:
            w, h = adapter._jpeg_size(slide, value.record)
            images.append(Image(value.key, role, w, h, "JPEG", "keep",
                                runs=_runs(value.record, "image")))
        nonhier.append(value.record)
    hier = list(slide.index.hier)
    sections = {name: dict(keys) for name, keys in slide.ini.sections.items()}
    wanted = {f"FILE_{i}": data_file_name(i) for i in range(len(slide.data_paths))}
    for key, name in [*wanted.items(), ("INDEXFILE", INDEX_NAME)]:
        group = DATAFILE if key != "INDEXFILE" else HIERARCHICAL
        if sections[group].get(key) != name:
            fields.append(Field(f"mirax:{group}/{key}", f"Slidedat.ini [{group}]",
                                sections[group].get(key, ""), "replace", name,
                                why="the writer names data and index files this way"))
            sections[group][key] = name
    for group, keys in sections.items():
        for key, value in keys.items():
            if not (group in (DATAFILE, HIERARCHICAL) and (key in wanted or key == "INDEXFILE")):
                fields.append(Field(f"mirax:{key}", f"Slidedat.ini [{group}]", value, "keep",
                                    why=KEPT))
    files = [DataFileOut(data_file_name(i)) for i in range(len(slide.data_paths))]
    for record in hier + nonhier:
        for *_, offset, length, fileno in (record.items() if record else ()):
            files[fileno].keep.append((offset, offset + length))
    for out, size in zip(files, slide.data_sizes):
        first = min([a for a, _ in out.keep], default=size)
        if first:
            out.keep.append((0, first))    # the file header ("01.02", SLIDE_ID, ...) as it is
    adapter._plan_mrxs_file(slide, fields)
    ini = Slidedat(sections, slide.ini.bom).to_bytes()
    plan = Plan(adapter.format_name, images, fields, list(slide.warnings), [],
                MiraxOutput(ini, b"", files))
    return plan, hier, nonhier


def dicom_fields(ds, where: str) -> list[Field]:
    """Every element of a header kept as stored, as the plan lists it."""
    binary = ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ")
    out = []
    for elem in ds.iterall():
        if elem.VR in binary or int(elem.tag) == 0x7FE00010:
            continue
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        value = elem.value
        text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) else \
            ("" if value is None else str(value))
        out.append(Field(f"dicom:{name}", f"{where}/{name}", text, "keep", why=KEPT,
                         known=bool(elem.keyword)))
    return out
