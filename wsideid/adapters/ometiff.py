"""OME-TIFF.

The OME-XML sits in the first IFD's ImageDescription. Each OME Image names its IFDs through
TiffData (IFD, PlaneCount; OME-TIFF specification), pyramids are SubIFDs of each plane's IFD
(OME-TIFF 6), and Bio-Formats names label and macro Images "label" and "macro". The XML is
parsed with entity resolution, DTDs and network access off (a DOCTYPE is refused), edited
element by element against formats/ome-tiff.toml, and serialised again; it must still validate
against the OME schema.
"""
from __future__ import annotations

import fnmatch
import re
from functools import lru_cache

from .. import catalog
from ..containers.tiff.reader import Ifd, TiffFile
from ..errors import SlideError
from ..images.shape import reduced_copy
from ..model import KEPT, Field, Plan
from ..policy import decide
from . import ome_schema as vocabulary
from .ome_schema import OME_NAMESPACES, ome_schema, parse_ome, schema_errors  # noqa: F401 - re-exported
from .tiff import TiffAdapter, TiffPlanning, TiffSlide

XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
# Words Bio-Formats and other converters use in the Name of a label or overview Image
# ("label", "label image", "slide label", "macro image", "overview image", any case).
ROLE_WORDS = {"label": "label", "barcode": "label", "macro": "macro", "overview": "macro"}
# A Name made only of these words says what the image is and nothing else: kept as it is.
ROLE_VOCABULARY = {"label", "barcode", "macro", "overview", "thumbnail", "image", "slide", "whole"}
WORD = re.compile(r"[a-z]+")
DEVICE_ATTRIBUTES = {"SerialNumber", "LotNumber"}
# Attributes whose values are free text (reported and searched for when their element goes);
# the others are IDs, enumerations and numbers that also occur in what is kept.
FREE_TEXT_ATTRIBUTES = {"Name", "FirstName", "MiddleName", "LastName", "Email", "Institution",
                        "UserName", "FileName", "SerialNumber", "LotNumber", "Text", "Namespace"}
NOT_IN_CATALOG = "attribute not in the catalog"
# Elements whose content is text (the rest hold elements only): UUID (replaced).
TEXT_ELEMENTS = {"UUID"}
ANNOTATION_TYPES = {"XMLAnnotation", "FileAnnotation", "ListAnnotation", "LongAnnotation",
                    "DoubleAnnotation", "CommentAnnotation", "BooleanAnnotation",
                    "TimestampAnnotation", "TagAnnotation", "TermAnnotation", "MapAnnotation"}


def looks_like_ome(tiff: TiffFile) -> bool:
    text = tiff.ifds[0].text(270) or ""
    head = text[:4096]
    return "<OME" in head and "openmicroscopy.org/Schemas/OME" in head


def _qname(el):
    from lxml import etree

    return etree.QName(el)


def _local(el) -> str:
    return _qname(el).localname


def _ns(el) -> str:
    return _qname(el).namespace or ""


def _is_element(node) -> bool:
    return isinstance(node.tag, str)


@lru_cache(maxsize=1)
def attribute_types() -> tuple[dict[str, str], list[tuple[str, str]]]:
    table = catalog.read_toml("ome-tiff.toml").get("attribute_types", {})
    exact = {k: v for k, v in table.items() if "*" not in k}
    patterns = [(k, v) for k, v in table.items() if "*" in k]
    return exact, patterns


def attribute_type(element: str, name: str) -> str:
    """The type of an attribute of an element ("text", which nothing matches, if none)."""
    exact, patterns = attribute_types()
    for key in (f"{element}@{name}", name):
        if key in exact:
            return exact[key]
    return next((kind for pattern, kind in patterns if fnmatch.fnmatchcase(name, pattern)), "text")


# Attributes whose value the tool writes itself (a pseudonym, the output's name and UUID, the
# renumbered IFD): kept whatever the slide held there.
REPLACED_ATTRIBUTES = {("OME", "UUID"), ("Image", "Name"), ("StageLabel", "Name"),
                       ("UUID", "FileName"), ("TiffData", "IFD")}
# The type an ID names, for elements that point at another element (OME IDs are
# "Type:n" or "urn:lsid:authority:Type:n"; the schema's patterns, 2016-06).
ID_TYPES = {"InstrumentRef": "Instrument", "AnnotationRef": "Annotation",
            "ObjectiveSettings": "Objective", "LightSourceSettings": "LightSource",
            "DetectorSettings": "Detector", "ExcitationFilterRef": "Filter",
            "EmissionFilterRef": "Filter", "DichroicRef": "Dichroic", "FilterSetRef": "FilterSet",
            "ImageRef": "Image", "Laser": "LightSource", "Arc": "LightSource",
            "Filament": "LightSource", "LightEmittingDiode": "LightSource",
            "GenericExcitationSource": "LightSource", **{a: "Annotation" for a in (
                "XMLAnnotation", "FileAnnotation", "ListAnnotation", "LongAnnotation",
                "DoubleAnnotation", "CommentAnnotation", "BooleanAnnotation",
                "TimestampAnnotation", "TagAnnotation", "TermAnnotation", "MapAnnotation")}}
# Type:n[:m...]; Bio-Formats names its pyramid annotations Annotation:Resolution:n
CANONICAL_INDEX = r"(:Resolution)?(:\d{1,4}){1,4}"


class CanonicalIds:
    """OME IDs rewritten as `Type:n` (Image:0, Channel:0:0, ...): an ID already of that shape
    stays, any other (urn:lsid:authority:..., a name after the colon) becomes `Type:k` with a
    k no other ID of its type uses; every reference to it gets the same new value."""

    def __init__(self, root):
        self.used: dict[str, set[str]] = {}
        self.mapping: dict[tuple[str, str], str] = {}
        for el in root.iter():
            if _is_element(el) and el.get("ID"):
                kind = id_type(_local(el))
                if re.fullmatch(re.escape(kind) + CANONICAL_INDEX, el.get("ID")):
                    self.used.setdefault(kind, set()).add(el.get("ID"))

    def canonical(self, element: str, value: str) -> str:
        kind = id_type(element)
        if re.fullmatch(re.escape(kind) + CANONICAL_INDEX, value):
            return value
        key = (kind, value)
        if key not in self.mapping:
            used = self.used.setdefault(kind, set())
            n = 0
            while f"{kind}:{n}" in used:
                n += 1
            used.add(f"{kind}:{n}")
            self.mapping[key] = f"{kind}:{n}"
        return self.mapping[key]


def id_type(element: str) -> str:
    return ID_TYPES.get(element, element)


def names_a_role_only(name: str) -> bool:
    words = WORD.findall(name.lower())
    return bool(words) and set(words) <= ROLE_VOCABULARY and not re.search(r"[^A-Za-z ]", name)


def _pixels_size(image, ns: str) -> tuple[int, int] | None:
    pixels = image.find(f"{{{ns}}}Pixels")
    try:
        return int(pixels.get("SizeX", "0")), int(pixels.get("SizeY", "0"))
    except (AttributeError, ValueError):
        return None


def _image_role(name: str, number: int, size, first_size) -> str:
    """A role from the Image's name and its shape: a name that says label or overview decides
    (the more dangerous role); the first Image is the slide; another Image is kept only when
    it has the slide's shape (a thumbnail, another resolution), else it is of unknown role."""
    words = set(WORD.findall(name.lower()))
    for word, role in ROLE_WORDS.items():
        if word in words and role == "label":
            return "label"
    for word, role in ROLE_WORDS.items():
        if word in words:
            return role
    if number == 0:
        return "level"
    if size and first_size and reduced_copy(size, first_size):
        return "thumbnail" if "thumbnail" in words else "level"
    return "unknown"


class OmeTiffAdapter(TiffAdapter):
    name = "ome-tiff"
    order = 200
    extension = ".ome.tif"

    def claims(self, tiff: TiffFile) -> bool:
        return looks_like_ome(tiff)

    # ---- which IFDs belong to which Image ------------------------------------------------
    def load(self, slide: TiffSlide) -> None:
        root = parse_ome(slide.tiff.ifds[0].text(270) or "")
        slide.extra["root"] = root
        slide.extra["image_ifds"] = self._image_ifds(root, len(slide.tiff.ifds))

    @staticmethod
    def _image_ifds(root, n_ifds: int) -> list[tuple[str, str, list[int]]]:
        """(Image ID, role, main-chain IFD indices) for every Image."""
        out = []
        ns = _ns(root)
        files = {u.get("FileName") for u in root.iter(f"{{{ns}}}UUID") if u.get("FileName")}
        if len(files) > 1:
            raise SlideError("multi-file OME-TIFF (TiffData points into other files) is not supported")
        first_size = None
        for number, image in enumerate(root.iter(f"{{{ns}}}Image")):
            size = _pixels_size(image, ns)
            if number == 0:
                first_size = size
            role = _image_role(image.get("Name") or "", number, size, first_size)
            ifds: list[int] = []
            for td in image.iter(f"{{{ns}}}TiffData"):
                try:
                    first = int(td.get("IFD", "0"))
                    count = int(td.get("PlaneCount", "1" if "IFD" in td.attrib else str(n_ifds - first)))
                except ValueError:
                    raise SlideError("OME-XML TiffData IFD or PlaneCount is not a number") from None
                ifds.extend(range(first, first + count))
            out.append((image.get("ID", ""), role, ifds))
        return out

    def classify(self, slide: TiffSlide) -> list[str]:
        roles = ["unknown"] * len(slide.tiff.ifds)
        for _, role, ifds in slide.extra["image_ifds"]:
            for i in ifds:
                if not 0 <= i < len(roles):
                    raise SlideError(f"OME-XML TiffData points at IFD {i}, but the file has "
                                     f"{len(roles)}")
                roles[i] = role
        return roles

    def prepare(self, ctx: TiffPlanning) -> None:
        policy, slide = ctx.policy, ctx.slide
        kept = [i for i, role in enumerate(slide.roles)
                if policy.image_action_for(f"IFD {i}", role) in KEPT]
        if not kept or kept[0] != 0:
            raise SlideError("the first IFD (which holds the OME-XML) would be dropped")
        ctx.extra["ifd_map"] = {old: new for new, old in enumerate(kept)}
        ctx.extra["dropped_images"] = {image_id for image_id, role, ifds in slide.extra["image_ifds"]
                                       if not any(policy.image_action_for(f"IFD {i}", role) in KEPT
                                                  for i in ifds)}

    def text_tag(self, ctx: TiffPlanning, ifd: Ifd, code: int, text: str):
        if code == 270 and ifd is ctx.slide.tiff.ifds[0]:
            return XmlCleaner(ctx).clean(ctx.slide.extra["root"])
        if code == 270:
            return None, [Field("tiff:ImageDescription", f"{ifd.label} tag 270", text, "remove",
                                why="OME-XML belongs in the first IFD only")]
        return super().text_tag(ctx, ifd, code, text)

    def warnings(self, slide: TiffSlide) -> list[str]:
        unknown = sum(1 for _, role, _ in slide.extra["image_ifds"] if role == "unknown")
        return ([f"{unknown} OME Image(s) neither named as a label or overview nor shaped like the "
                 "slide: their role cannot be told, so they were dropped"] if unknown else [])

    def checks(self, source: TiffSlide, out: TiffSlide, plan: Plan, out_plan: Plan) -> list[str]:
        errors = schema_errors(out.tiff.ifds[0].text(270) or "")
        return [f"OME-XML does not validate: {errors[0]}"] if errors else []


class XmlCleaner:
    """One pass over the OME-XML: element by element, attribute by attribute."""

    def __init__(self, ctx: TiffPlanning):
        self.ctx = ctx
        self.policy = ctx.policy
        self.naming = ctx.naming
        self.elements = catalog.load("ome-tiff", "elements")
        self.annotations = catalog.load("ome-tiff", "annotations")

    def clean(self, original) -> tuple[str, list[Field]]:
        from lxml import etree

        root = etree.fromstring(etree.tostring(original))  # a copy; the slide's tree stays as read
        self.ids = CanonicalIds(root)
        fields: list[Field] = []
        self._clean_element(root, "OME", fields)
        kept_annotations = {el.get("ID") for el in root.iter() if _is_element(el)
                            and _local(el) in ANNOTATION_TYPES}
        dangling = set()
        for ref in [el for el in root.iter() if _is_element(el) and _local(el) == "AnnotationRef"]:
            if ref.get("ID") not in kept_annotations:
                dangling.add(ref.get("ID"))
                ref.getparent().remove(ref)
        for f in fields:
            if f.name == "ome:AnnotationRef@ID" and f.value in dangling:
                f.action, f.why = "remove", "points at a removed annotation"
        # declarations of namespaces nothing uses any more (their URIs are the slide's text)
        etree.cleanup_namespaces(root)
        for prefix, uri in (root.nsmap or {}).items():
            if not (uri in OME_NAMESPACES or uri == XSI_NS):
                raise SlideError("OME-XML still declares a foreign namespace after cleaning")
        text = etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode("utf-8")
        return text, fields

    def _clean_element(self, el, path: str, fields: list[Field]) -> None:
        self._clean_attributes(el, path, fields)
        if _local(el) not in TEXT_ELEMENTS:
            self._drop_loose_text(el, path, fields)
        for child in list(el):
            if not _is_element(child):  # comments, processing instructions
                fields.append(Field("ome:comment", path, str(child.text or ""), "remove",
                                    why="XML comment"))
                el.remove(child)
                continue
            local = _local(child)
            where = f"{path}/{local}"
            if _ns(child) != _ns(el):
                self._drop(child, where, fields, "element outside the OME namespace", known=False)
                continue
            if local == "Image" and child.get("ID") in self.ctx.extra["dropped_images"]:
                self._drop(child, where, fields, "image dropped with its IFDs")
                continue
            if _local(el) == "StructuredAnnotations":
                self._clean_annotation(child, where, fields)
                continue
            entry = self.elements.lookup(local)
            action = self.policy.field_action(entry.action)
            if action == "remove":
                # an element the catalog does not know is named by the slide: withheld
                self._drop(child, where, fields, entry.why, known=entry is not catalog.UNKNOWN)
            elif action == "date":
                self._date(child, entry, where, fields)
            else:
                self._clean_element(child, where, fields)

    def _clean_attributes(self, el, path: str, fields: list[Field]) -> None:
        local = _local(el)
        entry = self.elements.lookup(local)
        allowed = entry.attributes or ()
        for attr in list(el.attrib):
            qname = _qname(attr)
            name = qname.localname
            value = el.get(attr)
            if qname.namespace not in (None, XSI_NS):
                rule = catalog.Entry(name, "remove", NOT_IN_CATALOG)   # a foreign namespace's
            elif name in DEVICE_ATTRIBUTES:
                rule = catalog.Entry(name, "device", "serial or lot number; kept only with "
                                     "--keep-device-id", "serial")
            elif name in allowed:
                kind = attribute_type(local, name)
                # enumerations and units: the values the schema allows for this attribute
                rule = catalog.Entry(name, "keep", entry.why, kind,
                                     grammar=vocabulary.enumeration_pattern(local, name)
                                     if kind in catalog.VOCABULARY_TYPES else None)
            else:
                rule = catalog.Entry(name, "remove", NOT_IN_CATALOG)
            known = rule.why != NOT_IN_CATALOG
            new = self._replacement(local, name, value) if rule.action == "keep" else None
            if new is not None:   # a value of the tool's own (pseudonym, output name, ...)
                field = Field(f"ome:{local}@{name}", f"{path}@{name}", value,
                              "keep" if new == value else "replace",
                              None if new == value else new, why=rule.why)
            else:
                field = decide(rule, value, self.policy, name=f"ome:{local}@{name}",
                               where=f"{path}@{name}")
                field.known = known
            if field.action == "replace":
                el.set(attr, new)
            elif field.action != "keep":
                del el.attrib[attr]
            fields.append(field)
        if local == "UUID" and el.text and el.text.strip() != self.naming.uuid:
            fields.append(Field("ome:UUID", path, el.text.strip(), "replace", self.naming.uuid,
                                why="file identity"))
            el.text = self.naming.uuid

    @staticmethod
    def _drop_loose_text(el, path: str, fields: list[Field]) -> None:
        """Text between the children of an element whose content is elements only (the
        schema allows none there; it would be the slide's words)."""
        pieces = [el] + list(el)
        for node, attr in [(el, "text")] + [(child, "tail") for child in pieces[1:]]:
            text = getattr(node, attr)
            if text and text.strip():
                fields.append(Field("ome:text", path, text.strip(), "remove",
                                    why="text inside an element that holds elements only"))
                setattr(node, attr, None)

    def _replacement(self, element: str, attribute: str, value: str) -> str | None:
        if attribute == "ID":
            return self.ids.canonical(element, value)
        if element == "OME" and attribute == "UUID":
            return self.naming.uuid
        if element == "UUID" and attribute == "FileName":
            return self.naming.output_name
        if element == "Image" and attribute == "Name":
            return value if names_a_role_only(value) else self.naming.pseudonym
        if element == "StageLabel" and attribute == "Name":
            return "stage"  # required by the schema; the original name is free text
        if element == "TiffData" and attribute == "IFD":
            if not catalog.NUMBER.fullmatch(value) or not value.isdigit():
                return None   # then checked as a number, and removed
            return str(self.ctx.extra["ifd_map"].get(int(value), int(value)))
        return None

    def _date(self, el, entry: catalog.Entry, where: str, fields: list[Field]) -> None:
        value = (el.text or "").strip()
        field = decide(entry, value, self.policy, name=f"ome:{_local(el)}", where=where)
        if field.action != "date":
            self._drop(el, where, fields, entry.why)
            return
        el.text = field.new_value
        fields.append(field)

    def _drop(self, el, where: str, fields: list[Field], why: str, known: bool = True) -> None:
        texts = [t.strip() for t in el.itertext() if t and t.strip()]
        texts += [v for node in el.iter() if _is_element(node)
                  for k, v in node.attrib.items()
                  if _qname(k).localname in FREE_TEXT_ATTRIBUTES and not names_a_role_only(v)]
        for text in texts or [""]:  # every piece of text is reported (and searched for) alone
            fields.append(Field(f"ome:{_local(el)}", where, text, "remove", why=why, known=known))
        el.getparent().remove(el)

    # ---- annotations -------------------------------------------------------------------------
    def _clean_annotation(self, el, where: str, fields: list[Field]) -> None:
        """An annotation is kept only for a reason the catalog gives, and then only the parts
        that reason needs (element by element); anything else inside it goes."""
        key = f"{_local(el)} {el.get('Namespace', '')}".strip()
        entry = self.annotations.lookup(key)
        if entry.action not in ("keep", "vendor"):
            self._drop(el, where, fields, entry.why if entry is not catalog.UNKNOWN
                       else "annotation not in the catalog", known=entry is not catalog.UNKNOWN)
            return
        for attr in list(el.attrib):
            if _qname(attr).localname not in ("ID", "Namespace") or _qname(attr).namespace:
                fields.append(Field(f"ome:{_local(el)}@(attribute)", f"{where}@(withheld)",
                                    el.get(attr), "remove", why="not needed by the annotation's "
                                    "purpose", known=False))
                del el.attrib[attr]
            elif _qname(attr).localname == "ID":
                old = el.get(attr)
                new = self.ids.canonical(_local(el), old)
                if new != old:
                    el.set(attr, new)
                    fields.append(Field(f"ome:{_local(el)}@ID", f"{where}@ID", old, "replace", new,
                                        why="OME IDs are made canonical (Type:n)"))
        value = self._only_value_child(el, where, fields)
        if entry.action == "keep":
            fields.append(Field(f"ome:{key}", where, "", "keep", why=entry.why))
            self._clean_pyramid_resolution(value, f"{where}/Value", fields)
        else:
            self._clean_original_metadata(el, value, where, fields)

    def _only_value_child(self, el, where: str, fields: list[Field]):
        """An annotation's Value; every other child (a Description, AnnotationRefs, text) goes."""
        value = None
        for child in list(el):
            if (_is_element(child) and _local(child) == "Value" and _ns(child) == _ns(el)
                    and value is None):
                value = child
                continue
            known = _is_element(child) and _ns(child) == _ns(el)
            self._drop(child, f"{where}/{_local(child) if known else '(withheld)'}", fields,
                       "not needed by the annotation's purpose", known=known)
        if (el.text or "").strip():
            fields.append(Field("ome:text", where, el.text.strip(), "remove", why="loose text"))
        el.text = None
        return value

    def _clean_pyramid_resolution(self, value, where: str, fields: list[Field]) -> None:
        """Bio-Formats' pyramid sizes: <Value><M K="1">1024 768</M>...</Value>; nothing else."""
        if value is None:
            return
        for child in list(value):
            keep = (_is_element(child) and _local(child) == "M" and not len(child)
                    and set(child.attrib) == {"K"} and (child.get("K") or "").isdigit()
                    and re.fullmatch(r"\d+ \d+", (child.text or "").strip()))
            if not keep:
                known = _is_element(child) and _ns(child) == _ns(value)
                self._drop(child, f"{where}/{_local(child) if known else '(withheld)'}", fields,
                           "not a pyramid level size", known=known)

    def _clean_original_metadata(self, el, value, where: str, fields: list[Field]) -> None:
        """Bio-Formats OriginalMetadata: <Value><OriginalMetadata><Key/><Value/></OriginalMetadata>
        ...</Value>: each record through the catalog of the vendor it came from; records hold a
        Key and a Value and nothing else."""
        vendors = [catalog.load("aperio-svs"), catalog.load("hamamatsu-ndpi", "properties")]
        for record in list(value) if value is not None else []:
            parts = ({_local(c): c for c in record if _is_element(c)}
                     if _is_element(record) and _local(record) == "OriginalMetadata" else {})
            key_el, val_el = parts.get("Key"), parts.get("Value")
            well_formed = (key_el is not None and val_el is not None and len(record) == 2
                           and not record.attrib and not len(key_el) and not len(val_el))
            if not well_formed:
                # its texts are searched for in the output, but a key name the vendors'
                # catalogs know is no secret (a kept record may use it too)
                if (key_el is not None and catalog.lookup(vendors, (key_el.text or "").strip())
                        is not catalog.UNKNOWN):
                    key_el.text = None
                self._drop(record, f"{where}/(withheld)", fields, "not a Key/Value record",
                           known=False)
                continue
            key = (key_el.text or "").strip()
            field = decide(catalog.lookup(vendors, key), (val_el.text or "").strip(), self.policy,
                           name=f"ome:OriginalMetadata:{key}", where=where)
            fields.append(field)
            if field.action == "date":
                val_el.text = field.new_value
            elif field.action != "keep":
                value.remove(record)
        if value is None or not len(value):
            fields.append(Field("ome:XMLAnnotation", where, "", "remove",
                                why="no original metadata left"))
            el.getparent().remove(el)


ADAPTER = OmeTiffAdapter()
