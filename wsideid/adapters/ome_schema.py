"""The OME 2016-06 schema as a vocabulary: which elements exist, which attributes each has, the
values an enumerated attribute may take, and validation whose messages carry only the
schema's own words (a libxml2 message quotes the offending value, which is the slide's text,
and messages go to stderr and into the audit report).

The schema ships with the ome-types package, found without importing it.
"""
from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from ..errors import SlideError

XSD = "{http://www.w3.org/2001/XMLSchema}"
OME_2016 = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
# the namespaces of OME-XML versions a reader may meet; the output is validated against 2016-06
OME_NAMESPACES = {f"http://www.openmicroscopy.org/Schemas/OME/{v}"
                  for v in ("2016-06", "2015-01", "2013-06", "2012-06", "2011-06", "2010-06")}
QUOTED = re.compile(r"'([^']*)'")
DOCTYPE = re.compile(r"<!DOCTYPE", re.IGNORECASE)


def parse_ome(text: str):
    from lxml import etree

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
    if qn.localname != "OME" or qn.namespace not in OME_NAMESPACES:
        raise SlideError("ImageDescription mentions OME but its root is not an OME element")
    return root


def schema_path() -> Path | None:
    spec = importlib.util.find_spec("ome_types")
    if spec is None or not spec.submodule_search_locations:
        return None
    xsd = Path(list(spec.submodule_search_locations)[0]) / "ome-2016-06.xsd"
    return xsd if xsd.exists() else None


@lru_cache(maxsize=1)
def _tree():
    from lxml import etree

    xsd = schema_path()
    if xsd is None:
        return None
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.parse(str(xsd), parser)


@lru_cache(maxsize=1)
def ome_schema():
    """The OME 2016-06 schema compiled by libxml2; None when ome-types is not installed."""
    from lxml import etree

    tree = _tree()
    return etree.XMLSchema(tree) if tree is not None else None


@lru_cache(maxsize=1)
def attribute_names() -> frozenset[str]:
    """Every attribute name the schema declares."""
    tree = _tree()
    if tree is None:
        return frozenset()
    return frozenset(el.get("name") for el in tree.iter(f"{XSD}attribute") if el.get("name"))


@lru_cache(maxsize=1)
def element_names() -> frozenset[str]:
    tree = _tree()
    if tree is None:
        return frozenset()
    return frozenset(el.get("name") for el in tree.iter(f"{XSD}element") if el.get("name"))


def _local(name: str | None) -> str:
    return (name or "").split(":")[-1]


@lru_cache(maxsize=1)
def _named() -> tuple[dict, dict, dict]:
    tree = _tree()
    root = tree.getroot()
    simple = {el.get("name"): el for el in root.iter(f"{XSD}simpleType") if el.get("name")}
    complex_ = {el.get("name"): el for el in root.iter(f"{XSD}complexType") if el.get("name")}
    groups = {el.get("name"): el for el in root.iter(f"{XSD}attributeGroup") if el.get("name")}
    return simple, complex_, groups


def _enumeration(attribute) -> frozenset[str] | None:
    simple, _, _ = _named()
    holder = attribute.find(f"{XSD}simpleType")
    seen = set()
    while holder is None and attribute.get("type") and _local(attribute.get("type")) in simple:
        name = _local(attribute.get("type"))
        if name in seen:
            break
        seen.add(name)
        holder = simple[name]
    values: set[str] = set()
    depth = 0
    while holder is not None and depth < 8:
        values |= {e.get("value") for e in holder.iter(f"{XSD}enumeration")}
        restriction = holder.find(f"{XSD}restriction")
        base = _local(restriction.get("base")) if restriction is not None else ""
        holder = simple.get(base) if not values and base in simple else None
        depth += 1
    return frozenset(values) if values else None


def _attributes_of(type_el, depth: int = 0) -> dict[str, frozenset[str] | None]:
    _, complex_, groups = _named()
    out: dict[str, frozenset[str] | None] = {}
    if type_el is None or depth > 8:
        return out
    for node in type_el.iter(f"{XSD}attribute", f"{XSD}attributeGroup", f"{XSD}extension",
                             f"{XSD}element"):
        if node.tag == f"{XSD}element":
            continue
        # only what belongs to this type, not to elements declared inside it
        parent = node.getparent()
        while parent is not None and parent is not type_el and parent.tag != f"{XSD}element":
            parent = parent.getparent()
        if parent is not type_el:
            continue
        if node.tag == f"{XSD}attribute" and node.get("name"):
            out[node.get("name")] = _enumeration(node)
        elif node.tag == f"{XSD}attributeGroup" and node.get("ref"):
            out.update(_attributes_of(groups.get(_local(node.get("ref"))), depth + 1))
        elif node.tag == f"{XSD}extension":
            out.update(_attributes_of(complex_.get(_local(node.get("base"))), depth + 1))
    return out


@lru_cache(maxsize=1)
def element_attributes() -> dict[str, dict[str, frozenset[str] | None]]:
    """Element name -> its attributes -> the values the attribute may take (None: any value
    of its base type, a number or an ID, say)."""
    tree = _tree()
    if tree is None:
        return {}
    _, complex_, _ = _named()
    out: dict[str, dict[str, frozenset[str] | None]] = {}
    for element in tree.iter(f"{XSD}element"):
        name = element.get("name")
        if not name:
            continue
        type_el = element.find(f"{XSD}complexType")
        if type_el is None and element.get("type"):
            type_el = complex_.get(_local(element.get("type")))
        out.setdefault(name, {}).update(_attributes_of(type_el))
    return out


def enumeration(element: str, attribute: str) -> frozenset[str] | None:
    """The values an enumerated attribute of an element may take (None: not enumerated)."""
    return element_attributes().get(element, {}).get(attribute)


def enumeration_pattern(element: str, attribute: str) -> re.Pattern | None:
    """The enumeration as a grammar (None when the attribute is not enumerated)."""
    values = enumeration(element, attribute)
    return re.compile("|".join(re.escape(v) for v in sorted(values))) if values else None


def schema_errors(xml: str) -> list[str]:
    """Why `xml` is not valid OME (empty when it is, or when no schema is installed), in the
    schema's words only: where (element path, attribute) and which rule, never a value."""
    schema = ome_schema()
    if schema is None:
        return []
    doc = parse_ome(xml)
    if schema.validate(doc):
        return []
    return [describe_error(e, doc) for e in schema.error_log]


def describe_error(error, doc) -> str:
    """`line N: /OME/Image/Pixels, attribute X breaks the schema (rule)`: element names from
    the document only when the schema declares them, an attribute name only when the schema
    declares it, the rule's identifier from libxml2; nothing else of the message."""
    elements = element_names()
    try:
        found = doc.xpath(error.path) if error.path else []
    except Exception:  # noqa: BLE001 - an XPath lxml cannot evaluate: no path
        found = []
    steps: list[str] = []
    node = found[0] if found and hasattr(found[0], "tag") else None
    while node is not None and isinstance(node.tag, str):
        name = node.tag.rsplit("}", 1)[-1]
        steps.insert(0, name if name in elements else "(withheld)")
        node = node.getparent()
    where = "/" + "/".join(steps) if steps else "(document)"
    attributes = [q for q in QUOTED.findall(error.message or "") if q in attribute_names()]
    attribute = f", attribute {attributes[0]}" if attributes else ""
    rule = (error.type_name or "schema rule").removeprefix("SCHEMAV_").lower()
    return f"line {error.line}: {where}{attribute} breaks the schema ({rule})"
