"""The de-identification policy (safe defaults, relaxed one option at a time) and `decide`,
the one place where a field's action is chosen, for every field of every format."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .catalog import UNKNOWN, Entry, has_type, type_word
from .dates import COMMON, DateFormat, transform_date
from .model import Field

DATE_MODES = ("remove", "shift", "keep-year")
IMAGE_MODES = ("keep", "drop")
# Catalog types whose values are calendar dates (transformed); other values under a date
# action (a time of day) are kept only when dates are shifted, which keeps times.
DATE_TYPES = ("date",)


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
    date_shift_days: int = 0
    redaction: Redaction | None = None
    # False (`wsideid redact`): nothing is de-identified; adapters plan the slide as stored
    # (every field and image kept as it is) and only the redaction changes it.
    deidentify: bool = True

    def __post_init__(self) -> None:
        if self.dates not in DATE_MODES:
            raise ValueError(f"--dates must be one of {', '.join(DATE_MODES)}")
        for name in ("label", "macro"):
            if getattr(self, name) not in IMAGE_MODES:
                raise ValueError(f"--{name} must be keep or drop")

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

    def options(self) -> dict:
        """Every option, for the audit report (the shift itself is a secret: not recorded)."""
        options = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name not in ("date_shift_days", "redaction", "deidentify")}
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
    if action == "keep" and not has_type(value, entry.type):
        return Field(name, where, value, "remove", why=f"value is not {type_word(entry.type)}",
                     known=known)
    return Field(name, where, value, action, why=entry.why, known=known)
