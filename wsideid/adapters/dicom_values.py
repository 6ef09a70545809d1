"""What a kept DICOM value may be (formats/dicom-values.toml): no kept free text.

Every element the planner keeps goes through `check`: text elements only with a grammar,
code strings in the CS shape and, where PS3.3 defines terms, one of them; numbers as numbers;
UIDs as UIDs; binary values only with a rule of their own (the ICC profile is rebuilt, palette
data only in palette images). A code (PS3.3 8.8) is kept only from a known scheme with that
scheme's value shape, and its meaning only when the pair is in the shipped table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from .. import catalog, icc

# PS3.5 6.2: a code string is capitals, digits, space and underscore, 16 characters at most
DS_SHAPE = re.compile(r" *[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)? *")
IS_SHAPE = re.compile(r" *[+-]?\d{1,12} *")
AS_SHAPE = re.compile(r"\d{3}[DWMY]")
DA_SHAPE = re.compile(r"\d{8}")
TM_SHAPE = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
DT_SHAPE = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")
UI_SHAPE = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")
NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV"}
TEXT_VRS = {"LO", "LT", "ST", "UT", "SH", "PN", "UC"}
BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
CODE_KEYWORDS = {"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
                 "LongCodeValue", "URNCodeValue"}
ICC_PROFILE = 0x00282000
PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSETS = {0x7FE00001, 0x7FE00002}   # Extended Offset Table (Lengths): frame offsets
PALETTE_DATA = {0x00281201, 0x00281202, 0x00281203, 0x00281221, 0x00281222, 0x00281223}


@dataclass
class Verdict:
    action: str                       # keep | replace | remove
    new: object = None                # the new value (replace)
    why: str = ""
    texts: list[str] = field(default_factory=list)   # text a rule took out (searched for)


KEEP = Verdict("keep")


@lru_cache(maxsize=1)
def table() -> dict:
    return catalog.read_toml("dicom-values.toml")


@lru_cache(maxsize=None)
def grammar(kind: str) -> re.Pattern | None:
    own = table().get("types", {})
    return re.compile(own[kind]) if kind in own else catalog.grammar_of(kind)


def text_rule(keyword: str) -> dict | None:
    return table()["text"].get(keyword)


def is_listed_text(keyword: str) -> bool:
    return keyword in table()["text"] or keyword in CODE_KEYWORDS


def values_of(elem) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or getattr(elem, "VM", 1) > 1:
        return [str(v) for v in value]
    return [str(value)]


def check(elem, ds) -> Verdict:
    """Whether a kept element's value may stay as it is, what replaces it, or that it goes."""
    vr = elem.VR
    if int(elem.tag) == PIXEL_DATA or vr in NUMBER_VRS:
        return KEEP
    if vr in BINARY_VRS:
        return _binary(elem, ds)
    values = values_of(elem)
    if not values or all(v == "" for v in values):
        return KEEP
    if vr in TEXT_VRS:
        return _text(elem.keyword, values)
    if vr == "CS":
        return _code_string(elem.keyword, values)
    shape = {"DS": DS_SHAPE, "IS": IS_SHAPE, "AS": AS_SHAPE, "DA": DA_SHAPE, "TM": TM_SHAPE,
             "DT": DT_SHAPE, "UI": UI_SHAPE}.get(vr)
    if shape is None:
        return Verdict("remove", why=f"a {vr} value with no rule for what it holds")
    if not all(shape.fullmatch(v) for v in values if v):
        return Verdict("remove", why=f"not a {vr} value")
    if vr in ("DS", "IS") and any(catalog.record_number_in(v) for v in values):
        return Verdict("remove", why="a number with the digits of a record number or a date")
    return KEEP


def _text(keyword: str, values: list[str]) -> Verdict:
    rule = text_rule(keyword)
    if rule is None:
        return Verdict("remove", why="free text (no grammar says what it may hold)")
    pattern, dummy = grammar(rule["type"]), rule.get("dummy")
    # "Unknown" (wsidicomizer's word for a missing equipment value) says nothing either
    good = [v for v in values if v == dummy or (dummy is not None and v.lower() == "unknown")
            or (pattern is not None and pattern.fullmatch(v.strip()))]
    if len(good) == len(values):
        return KEEP
    if good:
        return Verdict("replace", good if len(good) > 1 else good[0],
                       why=f"values that are not {catalog.type_word(rule['type'])} removed")
    if dummy is not None:
        return Verdict("replace", dummy, why=f"not {catalog.type_word(rule['type'])}: the "
                       "element is required, a neutral value stands in")
    return Verdict("remove", why=f"not {catalog.type_word(rule['type'])}")


def _code_string(keyword: str, values: list[str]) -> Verdict:
    terms = table()["cs"].get(keyword)
    if terms and isinstance(terms[0], list):   # defined terms per value position
        new = [v if i < len(terms) and v in terms[i] else terms[min(i, len(terms) - 1)][0]
               for i, v in enumerate(values[:len(terms)])]
        if new == values:
            return KEEP
        return Verdict("replace", new, why="values outside the standard's defined terms replaced")
    if terms is not None:
        if all(v in terms for v in values):
            return KEEP
        return Verdict("remove", why="not one of the standard's defined terms")
    if not any(v.strip() for v in values):
        return KEEP
    # sixteen capitals and digits hold a surname or a record number as well as a code: a value
    # is kept only from its element's defined terms; the element stays, empty (it may be
    # required, Type 2)
    return Verdict("replace", "", why="a code string with no defined terms to check it against")


def _binary(elem, ds) -> Verdict:
    tag = int(elem.tag)
    if tag == ICC_PROFILE:
        try:
            cleaned = icc.clean(bytes(elem.value or b""))
        except icc.IccError as exc:
            return Verdict("remove", why=f"ICC profile refused: {exc}")
        texts = [t for t in cleaned.texts if not catalog.has_type(t, "icc_name")]
        if cleaned.data == bytes(elem.value):
            return Verdict("keep", texts=texts)
        return Verdict("replace", cleaned.data, texts=texts,
                       why=f"ICC profile rebuilt from its colour-defining tags; "
                           f"{len(cleaned.dropped)} other tag(s) left out")
    if tag in EXTENDED_OFFSETS:
        return KEEP   # 64-bit frame offsets and lengths (checked against the frames on writing)
    if tag in PALETTE_DATA and str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        return KEEP
    return Verdict("remove", why="binary value with no rule for what it holds")


def check_code(item) -> tuple[bool, dict[str, Verdict]]:
    """A code item (PS3.3 8.8): whether it can stay at all (a known scheme and a value of that
    scheme's shape), and a verdict for each of its code elements."""
    scheme = str(item.get("CodingSchemeDesignator", "") or "").strip()
    value = str(item.get("CodeValue", "") or "").strip()
    pattern = table()["schemes"].get(scheme)
    if pattern is None or not re.fullmatch(pattern, value):
        return False, {}
    verdicts = {"CodeValue": KEEP, "CodingSchemeDesignator": KEEP}
    meaning = table()["codes"].get(f"{scheme} {value}", value)
    current = str(item.get("CodeMeaning", "") or "")
    verdicts["CodeMeaning"] = (KEEP if current == meaning else Verdict(
        "replace", meaning, why="code meaning from the table of known codes (else the code value)"))
    version = str(item.get("CodingSchemeVersion", "") or "")
    if "CodingSchemeVersion" in item and version:
        verdicts["CodingSchemeVersion"] = (KEEP if grammar("coding_scheme_version").fullmatch(version)
                                           else Verdict("remove", why="not a coding scheme version"))
    for keyword in ("LongCodeValue", "URNCodeValue"):
        if keyword in item:
            verdicts[keyword] = Verdict("remove", why="a code value beside CodeValue")
    return True, verdicts


def is_code_item(item) -> bool:
    """A coded entry (PS3.3 8.8: a code value and its scheme)."""
    return any(k in item for k in ("CodeValue", "LongCodeValue", "URNCodeValue"))


def is_scheme_item(item) -> bool:
    """An item that names a coding scheme without a code (Coding Scheme Identification)."""
    return "CodingSchemeDesignator" in item and not is_code_item(item)


def known_scheme(item) -> bool:
    return str(item.get("CodingSchemeDesignator", "") or "").strip() in table()["schemes"]
