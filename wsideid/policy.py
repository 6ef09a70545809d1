"""The de-identification policy: safe defaults, relaxed one option at a time."""
from __future__ import annotations

from dataclasses import asdict, dataclass

DATE_MODES = ("remove", "shift", "keep-year")
IMAGE_MODES = ("keep", "drop")


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
        if role in ("level", "thumbnail"):
            return "keep"
        if role == "label":
            return self.label
        if role in ("macro", "overview"):
            return self.macro
        return "drop"  # unknown associated images: the safe end

    def options(self) -> dict:
        """Every option, for the audit report (the shift itself is a secret: not recorded)."""
        options = asdict(self)
        options.pop("date_shift_days")
        return options
