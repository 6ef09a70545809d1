"""Slidedat.ini of a de-identified MIRAX slide, rebuilt from the input's structure.

[GENERAL] and every section that a kept zoom level, hierarchical level or non-hierarchical
record refers to go key by key through `formats/mirax.toml`, under the scanner's own section
names (LAYER_i_LEVEL_j_SECTION, NONHIERLAYER_i[_LEVEL_j]_SECTION); [HIERARCHICAL] and
[DATAFILE] are written for what is kept, with layer and level names checked against the
format's vocabulary. Everything else is removed and reported by position, never by name.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .. import catalog
from ..containers.mirax.slidedat import (
    DATAFILE,
    GENERAL,
    HIERARCHICAL,
    INDEX_NAME,
    SCANNER_SECTION,
    Slidedat,
    data_file_name,
)
from ..dates import DAY_FIRST
from ..model import Field, Naming
from ..policy import Policy, decide, repeat_field

if TYPE_CHECKING:
    from .mrxs import MiraxSlide, NonhierValue

# [HIERARCHICAL] vocabulary: OpenSlide needs HIER_0 to be the zoom level layer; the other names
# seen in scanner output name filter and focus layers; level names are a word and a number.
HIER_LAYER_NAMES = re.compile(r"Slide (zoom|filter|focus) level|Microscope focus level")
HIER_VALUE = re.compile(r"(Zoom|Filter|Focus)Level_\d{1,4}")
STRUCTURE_KEY = re.compile(r"HIER_COUNT|NONHIER_COUNT|INDEXFILE|(NON)?HIER_\d+_(NAME|COUNT|VAL_\d+(_SECTION)?)")


class SlidedatPlanner:
    def __init__(self, slide: MiraxSlide, policy: Policy, naming: Naming, fields: list[Field]):
        self.slide, self.policy, self.naming, self.fields = slide, policy, naming, fields

    def build(self, kept: list[NonhierValue]) -> Slidedat:
        """Slidedat.ini rebuilt from its structure: [GENERAL] and every section a kept level or
        record refers to, key by key through the catalog, under the scanner's own section names
        (LAYER_i_LEVEL_j_SECTION, NONHIERLAYER_i[_LEVEL_j]_SECTION), so no free text survives
        in a section name; [HIERARCHICAL] and [DATAFILE] written for what is kept."""
        new: dict[str, dict[str, str]] = {}
        used: set[str] = set()

        def copy(old: str | None, group: str, target: str) -> None:
            entries = self.slide.ini.sections.get(old, {}) if old else {}
            if old:
                used.add(old)
            out = new.setdefault(target, {})
            for key, value in entries.items():
                repeat = repeat_field(f"mirax:{group}.{key}", f"Slidedat.ini [{target}]", key,
                                      value, 0, self.slide.ini.repeated.get(old or "", set()), set())
                if repeat is not None:    # only the last value is left to report (GKeyFile's)
                    self.fields.append(repeat)
                    continue
                field = self._plan_key(group, target, key, value)
                self.fields.append(field)
                if field.action in ("keep", "replace", "date") and field.new_value is not None:
                    out[key] = field.new_value

        copy(GENERAL, "general", GENERAL)
        hier: dict[str, str] = {"HIER_COUNT": str(len(self.slide.hier_layers))}
        level_sections: list[tuple[str | None, str, str]] = []
        for i, (name, sections) in enumerate(self.slide.hier_layers):
            hier[f"HIER_{i}_NAME"] = self._vocabulary(f"HIER_{i}_NAME", name,
                                                      HIER_LAYER_NAMES, f"Layer {i}")
            hier[f"HIER_{i}_COUNT"] = str(len(sections))
            for j, section in enumerate(sections):
                value = self.slide.ini.value(HIERARCHICAL, f"HIER_{i}_VAL_{j}")
                hier[f"HIER_{i}_VAL_{j}"] = self._vocabulary(f"HIER_{i}_VAL_{j}", value,
                                                             HIER_VALUE, f"Level_{j}")
                if section is not None:
                    target = f"LAYER_{i}_LEVEL_{j}_SECTION"
                    hier[f"HIER_{i}_VAL_{j}_SECTION"] = target
                    level_sections.append((section, "level" if i == 0 else "hier", target))
        positions = new_positions(kept)
        layers = {positions[(v.layer, v.index)][0]: v for v in kept}
        hier["NONHIER_COUNT"] = str(len(layers))
        record_sections: list[tuple[str | None, str, str]] = []
        for new_layer, first in sorted(layers.items()):
            values = [v for v in kept if positions[(v.layer, v.index)][0] == new_layer]
            hier[f"NONHIER_{new_layer}_NAME"] = first.layer_name
            hier[f"NONHIER_{new_layer}_COUNT"] = str(len(values))
            layer_section = f"NONHIERLAYER_{first.layer}_SECTION"
            if layer_section in self.slide.ini.sections:
                record_sections.append((layer_section, "layer", f"NONHIERLAYER_{new_layer}_SECTION"))
            for value in values:
                prefix = f"NONHIER_{new_layer}_VAL_{positions[(value.layer, value.index)][1]}"
                hier[prefix] = value.name
                if value.section is not None:
                    target = f"NONHIERLAYER_{new_layer}_LEVEL_{positions[(value.layer, value.index)][1]}_SECTION"
                    hier[f"{prefix}_SECTION"] = target
                    record_sections.append((value.section, "record", target))
        hier["INDEXFILE"] = INDEX_NAME
        new[HIERARCHICAL] = hier
        used.add(HIERARCHICAL)
        for key, value in self.slide.ini.sections[HIERARCHICAL].items():
            if not STRUCTURE_KEY.fullmatch(key):
                self.fields.append(Field(f"mirax:hierarchical.{key}", f"Slidedat.ini [{HIERARCHICAL}]",
                                         value, "remove", why="not in the catalog", known=False))
        new[DATAFILE] = {"FILE_COUNT": str(len(self.slide.data_paths)),
                         **{f"FILE_{i}": data_file_name(i) for i in range(len(self.slide.data_paths))}}
        used.add(DATAFILE)
        for i, path in enumerate(self.slide.data_paths):
            self.fields.append(Field(f"mirax:datafile.FILE_{i}", f"Slidedat.ini [{DATAFILE}]", path.name,
                                "replace", data_file_name(i), "data files are named DataNNNN.dat"))
        for old, group, target in level_sections + record_sections:
            copy(old, group, target)
        # reported by position: a section's name is free text of the slide's
        for number, (section, entries) in enumerate(self.slide.ini.sections.items()):
            if section in used:
                continue
            name = "" if SCANNER_SECTION.fullmatch(section) else section
            self.fields.append(Field("mirax:section", f"Slidedat.ini section {number}", name, "remove",
                                why="section of a removed record, or not in the catalog"))
            for key, value in entries.items():
                self.fields.append(Field("mirax:section key", f"Slidedat.ini section {number}",
                                    f"{key} = {value}", "remove", why="in a removed section"))
                self.fields.append(Field("mirax:section value", f"Slidedat.ini section {number}",
                                    value, "remove", why="in a removed section"))
        for entries in new.values():   # the old identifier wherever else it was repeated
            for key, value in entries.items():
                if self.slide.slide_id in value:
                    entries[key] = value.replace(self.slide.slide_id, self.naming.slide_id)
        self._drop_repeated_identifiers(new)
        return Slidedat(new, self.slide.ini.bom)

    def _drop_repeated_identifiers(self, new: dict[str, dict[str, str]]) -> None:
        """A kept free-text value that repeats a removed one (the slide name written into the
        objective name, say) goes too: what is removed in one place must not stay in another."""
        removed = {f.value.lower() for f in self.fields
                   if f.action in ("remove", "replace") and f.name.startswith("mirax:general.")
                   and len(f.value.strip()) >= 4 and not catalog.NUMBER.fullmatch(f.value.strip())
                   and f.value != self.slide.slide_id and f.value != f.new_value}
        if not removed:
            return
        for f in self.fields:
            if f.action not in ("keep", "date") or not f.location.startswith("Slidedat.ini ["):
                continue
            section, key = f.location[len("Slidedat.ini ["):-1], f.name.split(".", 1)[-1]
            value = new.get(section, {}).get(key)
            if section in (HIERARCHICAL, DATAFILE) or value is None:
                continue
            if any(r in value.lower() for r in removed):
                del new[section][key]
                f.action, f.new_value = "remove", None
                f.why = "repeats a value removed elsewhere in the slide"

    def _vocabulary(self, key: str, value: str, allowed: re.Pattern, neutral: str) -> str:
        """Layer and level names are structure, not text: a name outside the format's
        vocabulary is replaced by a neutral one (readers locate levels by position)."""
        if allowed.fullmatch(value):
            self.fields.append(Field(f"mirax:hierarchical.{key}", f"Slidedat.ini [{HIERARCHICAL}]",
                                     value, "keep", value, "layer structure from the format's vocabulary"))
            return value
        self.fields.append(Field(f"mirax:hierarchical.{key}", f"Slidedat.ini [{HIERARCHICAL}]",
                                 value, "replace", neutral, "not a name from the format's vocabulary"))
        return neutral

    def _plan_key(self, group: str, section: str, key: str, value: str) -> Field:
        entry = catalog.load("mirax", "fields").lookup(f"{group}.{key}")
        name, where = f"mirax:{group}.{key}", f"Slidedat.ini [{section}]"
        if entry.action == "replace":
            new_value = self.naming.slide_id if key == "SLIDE_ID" else self.naming.pseudonym
            return Field(name, where, value, "replace", new_value, entry.why)
        # Slidedat.ini dates are day first ("14/03/2021 13:37:42"); any other shape is removed
        field = decide(entry, value, self.policy, name=name, where=where, date_format=DAY_FIRST)
        if field.action == "keep":
            field.new_value = value
        return field


def new_positions(kept: list[NonhierValue]) -> dict[tuple[int, int], tuple[int, int]]:
    """(old layer, old index) -> (new layer, new index) for every kept record."""
    layers = sorted({v.layer for v in kept})
    out: dict[tuple[int, int], tuple[int, int]] = {}
    counts: dict[int, int] = {}
    for value in kept:
        new_layer = layers.index(value.layer)
        out[(value.layer, value.index)] = (new_layer, counts.get(new_layer, 0))
        counts[new_layer] = counts.get(new_layer, 0) + 1
    return out
