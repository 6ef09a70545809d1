"""The neutral model every adapter produces: images, fields, and the plan for them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Field:
    name: str          # catalog name, e.g. "tiff:Artist", "aperio:Filename", "jpeg:COM"
    location: str      # where it lives, e.g. "IFD 0 tag 270 ImageDescription"
    value: str         # the value as found (never written to reports)
    action: str = "keep"   # keep | remove | date | clean | replace
    new_value: str | None = None
    why: str = ""
    known: bool = True  # False: the name is the slide's own text (an unknown key or element)

    def public(self) -> dict:
        """What may leave the machine: name, location, action and reason, never values, and
        never a name the slide made up (an unknown key could be a patient's name)."""
        if self.known:
            return {"name": self.name, "location": self.location, "action": self.action,
                    "why": self.why}
        prefix = self.name.split(":", 1)[0]
        return {"name": f"{prefix}:(not in the catalog)", "location": _withheld(self.location),
                "action": self.action, "why": self.why}


def _withheld(location: str) -> str:
    """A location without its last step when that step is the slide's own name."""
    for sep in ("@", "/"):
        if sep in location:
            return location.rsplit(sep, 1)[0] + sep + "(withheld)"
    return location


@dataclass
class Image:
    index: str         # "IFD 2"
    role: str          # level | thumbnail | label | macro | overview | map | unknown
    width: int
    height: int
    compression: str
    action: str = "keep"   # keep | drop

    def public(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    format: str
    images: list[Image]
    fields: list[Field]
    warnings: list[str] = field(default_factory=list)

    def removed_values(self) -> set[str]:
        """Values that must not survive anywhere in the output."""
        out: set[str] = set()
        for f in self.fields:
            if f.action in ("remove", "replace", "date", "clean") and f.value:
                if f.new_value is not None and f.value.strip() == f.new_value.strip():
                    continue
                out.add(f.value)
        return out

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.fields:
            counts[f.action] = counts.get(f.action, 0) + 1
        return counts
