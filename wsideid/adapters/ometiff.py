"""OME-TIFF.

The OME-XML sits in the first IFD's ImageDescription. Each OME Image names its IFDs through
TiffData (IFD, PlaneCount; OME-TIFF specification), pyramids are SubIFDs of each plane's IFD
(OME-TIFF 6), and Bio-Formats names label and macro Images "label" and "macro". The XML is
parsed with entity resolution, DTDs and network access off (a DOCTYPE is refused), edited
element by element against formats/ome-tiff.toml, and serialised again; it must still validate
against the OME schema.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lxml import etree

from .. import catalog
from ..errors import SlideError
from ..model import Field
from ..policy import Policy
from ..pseudonym import transform_date
from ..tiff.reader import Ifd, TiffFile
from .tiffbase import TiffSlide

OME_NS = "http://www.openmicroscopy.org/Schemas/OME/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
ROLE_NAMES = {"label": "label", "macro": "macro", "overview": "macro", "thumbnail": "thumbnail"}
DEVICE_ATTRIBUTES = {"SerialNumber", "LotNumber"}
# Attributes whose values are free text (reported and searched for when their element goes);
# the others are IDs, enumerations and numbers that also occur in what is kept.
FREE_TEXT_ATTRIBUTES = {"Name", "FirstName", "MiddleName", "LastName", "Email", "Institution",
                        "UserName", "FileName", "SerialNumber", "LotNumber", "Text", "Namespace"}
DOCTYPE = re.compile(r"<!DOCTYPE", re.IGNORECASE)
ANNOTATION_TYPES = {"XMLAnnotation", "FileAnnotation", "ListAnnotation", "LongAnnotation",
                    "DoubleAnnotation", "CommentAnnotation", "BooleanAnnotation",
                    "TimestampAnnotation", "TagAnnotation", "TermAnnotation", "MapAnnotation"}


@dataclass(frozen=True)
class Naming:
    """What identifiers are replaced with: the slide's pseudonym, output file name and UUID."""
    pseudonym: str = "wsi-deidentified"
    file_name: str = "wsi-deidentified.ome.tif"
    uuid: str = "urn:uuid:00000000-0000-4000-8000-000000000000"


def looks_like_ome(tiff: TiffFile) -> bool:
    text = tiff.ifds[0].text(270) or ""
    head = text[:4096]
    return "<OME" in head and "openmicroscopy.org/Schemas/OME" in head


def parse_ome(text: str) -> etree._Element:
    if DOCTYPE.search(text):
        raise SlideError("OME-XML declares a DOCTYPE: entity declarations are refused")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False)
    try:
        root = etree.fromstring(text.encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        # the parser's message quotes element names, which are the slide's text (and errors go
        # into the audit report): only where it broke
        line, column = getattr(exc, "position", (0, 0)) or (0, 0)
        raise SlideError(f"OME-XML is not well-formed (line {line}, column {column})") from exc
    qn = etree.QName(root)
    if qn.localname != "OME" or not (qn.namespace or "").startswith(OME_NS):
        raise SlideError("ImageDescription mentions OME but its root is not an OME element")
    return root


def _local(el) -> str:
    return etree.QName(el).localname


def _ns(el) -> str:
    return etree.QName(el).namespace or ""


class OmeTiffSlide(TiffSlide):
    format = "ome-tiff"
    extension = ".ome.tif"

    def __init__(self, path, tiff=None):
        self.elements = catalog.load("ome-tiff", "elements")
        self.annotations = catalog.load("ome-tiff", "annotations")
        self.naming = Naming()
        self.path = Path(path)
        tiff = tiff or TiffFile(path)
        self.root = parse_ome(tiff.ifds[0].text(270) or "")
        self.image_ifds = self._image_ifds(len(tiff.ifds))
        super().__init__(path, tiff)

    # ---- which IFDs belong to which Image ------------------------------------------------
    def _image_ifds(self, n_ifds: int) -> list[tuple[str, str, list[int]]]:
        """(Image ID, role, main-chain IFD indices) for every Image."""
        out = []
        ns = _ns(self.root)
        files = {u.get("FileName") for u in self.root.iter(f"{{{ns}}}UUID") if u.get("FileName")}
        if len(files) > 1:
            raise SlideError("multi-file OME-TIFF (TiffData points into other files) is not supported")
        for image in self.root.iter(f"{{{_ns(self.root)}}}Image"):
            name = (image.get("Name") or "").strip().lower()
            role = ROLE_NAMES.get(name, "level")
            ifds: list[int] = []
            for td in image.iter(f"{{{_ns(self.root)}}}TiffData"):
                first = int(td.get("IFD", "0"))
                count = int(td.get("PlaneCount", "1" if "IFD" in td.attrib else str(n_ifds - first)))
                ifds.extend(range(first, first + count))
            out.append((image.get("ID", ""), role, ifds))
        return out

    def classify(self) -> list[str]:
        roles = ["unknown"] * len(self.tiff.ifds)
        for _, role, ifds in self.image_ifds:
            for i in ifds:
                if i >= len(roles):
                    raise SlideError(f"OME-XML TiffData points at IFD {i}, but the file has "
                                     f"{len(roles)}")
                roles[i] = role
        return roles

    def plan(self, policy: Policy, scan_codestreams: bool = True):
        kept = [i for i, role in enumerate(self.roles) if policy.image_action(role) == "keep"]
        if not kept or kept[0] != 0:
            raise SlideError("the first IFD (which holds the OME-XML) would be dropped")
        self.ifd_map = {old: new for new, old in enumerate(kept)}
        self.dropped_images = {image_id for image_id, role, _ in self.image_ifds
                               if policy.image_action(role) != "keep"}
        return super().plan(policy, scan_codestreams)

    def text_tag(self, ifd: Ifd, code: int, text: str, policy: Policy):
        if code == 270 and ifd is self.tiff.ifds[0]:
            return self.clean_xml(policy)
        if code == 270:
            return None, [Field("tiff:ImageDescription", f"{ifd.label} tag 270", text, "remove",
                                why="OME-XML belongs in the first IFD only")]
        return super().text_tag(ifd, code, text, policy)

    # ---- the XML ---------------------------------------------------------------------------
    def clean_xml(self, policy: Policy) -> tuple[str, list[Field]]:
        root = etree.fromstring(etree.tostring(self.root))  # a copy; self.root stays as read
        fields: list[Field] = []
        self._clean_element(root, "OME", policy, fields)
        kept_annotations = {el.get("ID") for el in root.iter() if isinstance(el.tag, str)
                            and _local(el) in ANNOTATION_TYPES}
        dangling = set()
        for ref in [el for el in root.iter() if isinstance(el.tag, str) and _local(el) == "AnnotationRef"]:
            if ref.get("ID") not in kept_annotations:
                dangling.add(ref.get("ID"))
                ref.getparent().remove(ref)
        for f in fields:
            if f.name == "ome:AnnotationRef@ID" and f.value in dangling:
                f.action, f.why = "remove", "points at a removed annotation"
        # declarations of namespaces nothing uses any more (their URIs are the slide's text)
        etree.cleanup_namespaces(root)
        for prefix, uri in (root.nsmap or {}).items():
            if not (uri.startswith(OME_NS) or uri == XSI_NS):
                raise SlideError("OME-XML still declares a foreign namespace after cleaning")
        text = etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode("utf-8")
        return text, fields

    def _clean_element(self, el, path: str, policy: Policy, fields: list[Field]) -> None:
        self._clean_attributes(el, path, policy, fields)
        for child in list(el):
            if not isinstance(child.tag, str):  # comments, processing instructions
                fields.append(Field("ome:comment", path, str(child.text or ""), "remove",
                                    why="XML comment"))
                el.remove(child)
                continue
            local = _local(child)
            where = f"{path}/{local}"
            if not _ns(child).startswith(OME_NS):
                self._drop(child, where, fields, "element outside the OME namespace", known=False)
                continue
            if local == "Image" and child.get("ID") in self.dropped_images:
                self._drop(child, where, fields, "image dropped with its IFDs")
                continue
            if _local(el) == "StructuredAnnotations":
                self._clean_annotation(child, where, policy, fields)
                continue
            entry = self.elements.lookup(local)
            action = policy.field_action(entry.action)
            if action == "remove":
                self._drop(child, where, fields, entry.why)
            elif action == "date":
                self._date(child, where, policy, fields, entry.why)
            else:
                self._clean_element(child, where, policy, fields)

    def _clean_attributes(self, el, path: str, policy: Policy, fields: list[Field]) -> None:
        local = _local(el)
        entry = self.elements.lookup(local)
        allowed = entry.attributes or ()
        for attr in list(el.attrib):
            qname = etree.QName(attr)
            name = qname.localname
            value = el.get(attr)
            where = f"{path}@{name}"
            if qname.namespace not in (None, XSI_NS):
                action, why = "remove", "attribute not in the catalog"   # a foreign namespace's
            elif name in DEVICE_ATTRIBUTES:
                action = "keep" if policy.keep_device_id else "remove"
                why = "serial or lot number; kept only with --keep-device-id"
            elif allowed == "*" or name in allowed:
                action, why = "keep", entry.why
            else:
                action, why = "remove", "attribute not in the catalog"
            known = why != "attribute not in the catalog"
            new = self._replacement(local, name, value)
            if action == "keep" and new is not None and new != value:
                el.set(attr, new)
                fields.append(Field(f"ome:{local}@{name}", where, value, "replace", new, why=why))
                continue
            if action == "remove":
                del el.attrib[attr]
            fields.append(Field(f"ome:{local}@{name}", where, value, action, why=why, known=known))
        if local == "UUID" and el.text and el.text.strip() != self.naming.uuid:
            fields.append(Field("ome:UUID", path, el.text.strip(), "replace", self.naming.uuid,
                                why="file identity"))
            el.text = self.naming.uuid

    def _replacement(self, element: str, attribute: str, value: str) -> str | None:
        if element == "OME" and attribute == "UUID":
            return self.naming.uuid
        if element == "UUID" and attribute == "FileName":
            return self.naming.file_name
        if element == "Image" and attribute == "Name":
            return value if value.strip().lower() in ROLE_NAMES else self.naming.pseudonym
        if element == "StageLabel" and attribute == "Name":
            return "stage"  # required by the schema; the original name is free text
        if element == "TiffData" and attribute == "IFD":
            return str(self.ifd_map.get(int(value), int(value)))
        return None

    def _date(self, el, where: str, policy: Policy, fields: list[Field], why: str) -> None:
        value = (el.text or "").strip()
        new = transform_date(value, policy.dates, policy.date_shift_days)
        if new is None:
            self._drop(el, where, fields, why)
            return
        el.text = new
        fields.append(Field(f"ome:{_local(el)}", where, value, "date", new, why=why))

    def _drop(self, el, where: str, fields: list[Field], why: str, known: bool = True) -> None:
        texts = [t.strip() for t in el.itertext() if t and t.strip()]
        texts += [v for node in el.iter() if isinstance(node.tag, str)
                  for k, v in node.attrib.items()
                  if etree.QName(k).localname in FREE_TEXT_ATTRIBUTES and v.strip().lower() not in ROLE_NAMES]
        for text in texts or [""]:  # every piece of text is reported (and searched for) alone
            fields.append(Field(f"ome:{_local(el)}", where, text, "remove", why=why, known=known))
        el.getparent().remove(el)

    # ---- annotations -------------------------------------------------------------------------
    def _clean_annotation(self, el, where: str, policy: Policy, fields: list[Field]) -> None:
        key = f"{_local(el)} {el.get('Namespace', '')}".strip()
        entry = self.annotations.lookup(key)
        if entry.action == "keep":
            fields.append(Field(f"ome:{key}", where, "", "keep", why=entry.why))
            return
        if entry.action == "vendor":
            self._clean_original_metadata(el, where, policy, fields)
            return
        self._drop(el, where, fields, entry.why if entry is not catalog.UNKNOWN
                   else "annotation not in the catalog", known=entry is not catalog.UNKNOWN)

    def _clean_original_metadata(self, el, where: str, policy: Policy, fields: list[Field]) -> None:
        """Bio-Formats OriginalMetadata: <OriginalMetadata><Key/><Value/></OriginalMetadata>."""
        vendors = [catalog.load("aperio-svs"), catalog.load("hamamatsu-ndpi", "properties")]
        records = [node for node in el.iter() if isinstance(node.tag, str)
                   and _local(node) == "OriginalMetadata"]
        for record in records:
            key_el = next((c for c in record if isinstance(c.tag, str) and _local(c) == "Key"), None)
            val_el = next((c for c in record if isinstance(c.tag, str) and _local(c) == "Value"), None)
            key = (key_el.text or "").strip() if key_el is not None else ""
            value = (val_el.text or "").strip() if val_el is not None else ""
            entry = next((v.lookup(key) for v in vendors if v.knows(key)), catalog.UNKNOWN)
            action = policy.field_action(entry.action)
            name = f"ome:OriginalMetadata:{key}"
            if action == "date" and entry.type == "date":
                new = transform_date(value, policy.dates, policy.date_shift_days)
                if new is not None:
                    val_el.text = new
                    fields.append(Field(name, where, value, "date", new, why=entry.why))
                    continue
                action = "remove"
            elif action == "date":
                action = "keep" if policy.dates == "shift" else "remove"
            if action == "keep":
                fields.append(Field(name, where, value, "keep", why=entry.why))
                continue
            fields.append(Field(name, where, value, "remove", why=entry.why,
                                known=entry is not catalog.UNKNOWN))
            record.getparent().remove(record)
        remaining = [node for node in el.iter() if isinstance(node.tag, str)
                     and _local(node) == "OriginalMetadata"]
        if not remaining:
            fields.append(Field("ome:XMLAnnotation", where, "", "remove",
                                why="no original metadata left"))
            el.getparent().remove(el)


@lru_cache(maxsize=1)
def ome_schema() -> etree.XMLSchema | None:
    """The OME 2016-06 schema, as shipped by the ome-types package (found without importing
    it), compiled by libxml2; None when the package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("ome_types")
    if spec is None or not spec.submodule_search_locations:
        return None
    xsd = Path(list(spec.submodule_search_locations)[0]) / "ome-2016-06.xsd"
    if not xsd.exists():
        return None
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(xsd), parser))


def schema_errors(xml: str) -> list[str]:
    """Why `xml` is not valid OME (empty when it is, or when no schema is installed)."""
    schema = ome_schema()
    if schema is None:
        return []
    doc = parse_ome(xml)
    if schema.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]
