"""The de-identification policy (safe defaults, relaxed one option at a time) and `decide`,
the one place where a field's action is chosen, for every field of every format."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .catalog import NUMBER, UNKNOWN, Entry, entry_accepts, type_word
from .dates import COMMON, DateFormat, transform_date
from .model import Field

DATE_MODES = ("remove", "shift", "keep-year")
LABEL_MODES = ("drop", "keep", "replace")
MACRO_MODES = ("drop", "keep", "redact")
# Catalog types whose values are calendar dates (transformed); other values under a date
# action (a time of day) are kept only when dates are shifted, which keeps times.
DATE_TYPES = ("date",)


REPEATED = ("repeated with different values: readers disagree on which one counts "
            "(OpenSlide keeps the last), so every copy is removed")
REPEATED_SAME = "repeated with the same value; one copy kept"


def repeated_keys(pairs: list[tuple[str, str | None]]) -> tuple[set[str], set[int]]:
    """Of a key/value list, the keys given more than once with different values (ambiguous:
    every occurrence goes) and the positions of later copies of a key repeated with the same
    value (they go, the first stays)."""
    first: dict[str, str | None] = {}
    ambiguous: set[str] = set()
    copies: set[int] = set()
    for i, (key, value) in enumerate(pairs):
        if key not in first:
            first[key] = value
        elif first[key] == value:
            copies.add(i)
        else:
            ambiguous.add(key)
    return ambiguous, copies


def repeat_field(name: str, where: str, key: str, value: str | None, i: int,
                 ambiguous: set[str], copies: set[int]) -> Field | None:
    """The removal of a repeated key's occurrence, or None when it is not one. A number is not
    handed to the residue search: the slide's structure repeats its sizes elsewhere (Aperio
    writes OriginalWidth twice, and the header holds one of them)."""
    if key in ambiguous:
        searched = "" if value is None or NUMBER.fullmatch(value.strip()) else value
        return Field(name, where, searched, "remove", why=REPEATED)
    if i in copies:
        return Field(name, where, "", "remove", why=REPEATED_SAME)
    return None


@dataclass(frozen=True)
class Redaction:
    """Regions to paint over in every pyramid level (`--regions`, `--region`): `regions` is
    their union (images.regions.Regions) in the pixels of pyramid level `level`
    (`--region-level`), `parts` each given region on its own (for reports), `fill` the grey
    value painted."""
    regions: Any
    parts: tuple = ()
    level: int = 0
    fill: int = 0

    def options(self) -> dict:
        return {"count": len(self.parts) or 1, "level": self.level, "fill": self.fill}


@dataclass(frozen=True)
class Policy:
    dates: str = "remove"
    keep_device_id: bool = False
    label: str = "drop"
    macro: str = "drop"
    retain_uids: bool = False
    retain_institution: bool = False
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False
    strict: bool = False                  # a label or overview that fails its checks fails the slide
    macro_region: tuple[float, float, float, float] | None = None   # the label area, as fractions
    ocr: bool = True                      # read text on labels and overviews when OCR is installed
    date_shift_days: int = 0
    # what one slide's images showed (decoded barcodes, label metadata): removed wherever they
    # are, and the images whose checks failed with what happens to them instead
    forbidden: frozenset[str] = field(default=frozenset(), compare=False)
    image_overrides: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    redaction: Redaction | None = None
    # False (`wsideid redact`): nothing is de-identified; adapters plan the slide as stored
    # (every field and image kept as it is) and only the redaction changes it.
    deidentify: bool = True

    def __post_init__(self) -> None:
        if self.dates not in DATE_MODES:
            raise ValueError(f"--dates must be one of {', '.join(DATE_MODES)}")
        if self.label not in LABEL_MODES:
            raise ValueError(f"--label must be one of {', '.join(LABEL_MODES)}")
        if self.macro not in MACRO_MODES:
            raise ValueError(f"--macro must be one of {', '.join(MACRO_MODES)}")
        if self.macro_region is not None:
            x0, y0, x1, y1 = self.macro_region
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError("--macro-region must be x0,y0,x1,y1 fractions with x0 < x1, y0 < y1")

    def field_action(self, catalog_action: str) -> str:
        """Map a catalog action to what happens under this policy."""
        if catalog_action == "device":
            return "keep" if self.keep_device_id else "remove"
        if catalog_action == "date":
            return "remove" if self.dates == "remove" else "date"
        return catalog_action

    def image_action(self, role: str) -> str:
        if not self.deidentify:
            return "keep"
        if role in ("level", "thumbnail"):
            return "keep"
        if role == "label":
            return self.label
        if role in ("macro", "overview"):
            return self.macro
        return "drop"  # unknown associated images: the safe end

    def image_action_for(self, index: str, role: str) -> str:
        """What happens to one image: its role's action, unless its checks decided otherwise."""
        return dict(self.image_overrides).get(index, self.image_action(role))

    def holds_forbidden(self, value: str) -> bool:
        low = value.lower()
        return any(f in low for f in self.forbidden)

    def options(self) -> dict:
        """Every option, for the audit report (the shift and what one slide showed are not
        options, and the shift is a secret: not recorded)."""
        options = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name not in ("date_shift_days", "forbidden", "image_overrides",
                                     "redaction", "deidentify")}
        if options["macro_region"] is not None:
            options["macro_region"] = list(options["macro_region"])
        if not self.deidentify:
            options["deidentify"] = False
        if self.redaction is not None:
            options["regions"] = self.redaction.options()
        return options

    def without_redaction(self) -> Policy:
        """The same policy without regions (verification re-plans an output with it)."""
        from dataclasses import replace

        return replace(self, redaction=None)


def decide(entry: Entry, value: str | None, policy: Policy, *, name: str, where: str,
           date_format: DateFormat = COMMON) -> Field:
    """One field's fate: the catalog's action under the policy, dates transformed, and a value
    that is to be kept checked against the type its catalog gives it.

    `value` None is a key without a value (a fragment of a `key=value` list): only a marker
    line the catalog keeps survives; any other fragment is the slide's own text. Actions other than keep, remove and date (a pointer, a
    nested description) are returned for the adapter to carry out."""
    known = entry is not UNKNOWN
    action = policy.field_action(entry.action)
    if value is None:
        if known and action == "keep" and entry.type == "marker":
            return Field(name, where, name.split(":", 1)[-1], "keep", why=entry.why)
        return Field(name, where, name.split(":", 1)[-1], "remove", why="fragment without '='",
                     known=False)
    if action == "date":
        if entry.type in DATE_TYPES:
            new = transform_date(value, policy.dates, policy.date_shift_days, date_format)
            if new is None:
                return Field(name, where, value, "remove", why=entry.why + " (not a date)")
            return Field(name, where, value, "date", new, why=entry.why)
        action = "keep" if policy.dates == "shift" else "remove"
    if action == "keep" and not entry_accepts(entry, value):
        return Field(name, where, value, "remove", why=f"value is not {type_word(entry.type)}",
                     known=known)
    if action == "keep" and policy.forbidden and policy.holds_forbidden(value):
        return Field(name, where, value, "remove", why=FORBIDDEN_WHY, known=known)
    return Field(name, where, value, action, why=entry.why, known=known)


FORBIDDEN_WHY = "holds a value the slide's label shows (a barcode, the label's text)"
