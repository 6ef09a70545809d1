"""The neutral model every adapter produces and every container consumes.

A *job* names a slide's files; reading it gives *images* (role, geometry, where their bytes
are) and *fields* (every piece of metadata, with its location and value); planning decides
one action per field and per image and gathers the *edits* a container applies. A *result*
is what one job's run produced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

IMAGE_ACTIONS = ("keep", "drop", "replace", "redact")
LABEL_AREA = "label area"   # RedactImage.regions["kind"] of an overview whose label is blanked
KEPT = ("keep", "replace", "redact")   # image actions that leave the image in the output


@dataclass(frozen=True)
class Job:
    """One slide: its main files (a TIFF file, a NAME.mrxs, or a DICOM series' instances) and
    the registry name of the format that claimed them."""
    paths: tuple[Path, ...]
    format: str

    @property
    def path(self) -> Path:
        return self.paths[0]


@dataclass(frozen=True)
class Naming:
    """What a slide's identifiers are replaced with, all derived from the key (the keyring
    goes along for identifiers derived while planning, such as DICOM UIDs)."""
    pseudonym: str
    output_name: str            # file (or folder) name of the released slide
    uuid: str = ""              # a stable file UUID (OME-XML)
    slide_id: str = ""          # replacement for a vendor slide identifier (MIRAX SLIDE_ID)
    keyring: Any = field(default=None, compare=False, repr=False)


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
class Runs:
    """Where an image's stored pieces (tiles, strips, frames, stored images) are: piece i is
    counts[i] bytes at offsets[i] of the slide file numbered files[i]."""
    files: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    codec: str = "other"        # jpeg | j2k | png | other: how text segments are looked for

    @classmethod
    def in_file(cls, file: int, offsets, counts, codec: str = "other") -> Runs:
        import numpy as np

        offsets = np.asarray(offsets, dtype=np.int64)
        return cls(np.full(len(offsets), file, dtype=np.int64), offsets,
                   np.asarray(counts, dtype=np.int64), codec)

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class Geometry:
    """Where an image sits in the pyramid and how it is cut into pieces."""
    level: int | None = None                      # 0 = full resolution; None: not a level
    downsample: tuple[float, float] | None = None  # relative to level 0, per axis
    tile: tuple[int, int] | None = None            # tile width and height; None: strips or one piece


@dataclass
class Image:
    index: str         # where the image is: "IFD 2", "instance 0", "zoom level 1", ...
    role: str          # level | thumbnail | label | macro | overview | map | geometry | unknown
    width: int
    height: int
    compression: str
    action: str = "keep"   # keep | drop | replace | redact
    geometry: Geometry = field(default_factory=Geometry)
    runs: Runs | None = None

    def public(self) -> dict:
        return {"index": self.index, "role": self.role, "width": self.width,
                "height": self.height, "compression": self.compression, "action": self.action}


@dataclass(frozen=True)
class ReplaceRun:
    """One stored piece of an image gets new bytes (a tile without its text segments)."""
    image: str
    run: int
    data: bytes
    header_shift: int = 0   # bytes removed before the entropy-coded data


@dataclass(frozen=True)
class PatchRun:
    """Parts of one stored piece get new bytes of the same length, in place: (offset inside
    the run, bytes). An NDPI level is one JPEG; a redaction rewrites only the restart
    intervals it touches, so the level is patched, never held in memory whole."""
    image: str
    run: int
    patches: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class ReplaceImage:
    """An image is replaced by another of the same size (a synthesized label)."""
    image: str
    pixels: Any


@dataclass(frozen=True)
class RedactImage:
    """Areas of an image are painted over. `regions` says where and how, for reports and
    verification (never pixel content); the new bytes are the plan's ReplaceRun and PatchRun
    edits of that image. Two kinds: regions painted through the pyramid (`--regions`), and an
    overview's label area (kind LABEL_AREA: `boxes` in the image's pixels, `_pixels` the
    picture with them blanked, which the container turns into new bytes)."""
    image: str
    regions: Any

    @property
    def label_area(self) -> bool:
        return self.regions.get("kind") == LABEL_AREA

    def public(self) -> dict:
        return {"image": self.image, **{k: v for k, v in self.regions.items()
                                         if not k.startswith("_")}}


Edit = ReplaceRun | PatchRun | ReplaceImage | RedactImage


@dataclass
class Plan:
    format: str
    images: list[Image]
    fields: list[Field]
    warnings: list[str] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    output: Any = None   # what the container writes: its own structure, built by the adapter
    empty: str | None = None   # why nothing is to be written (every image dropped), if so
    regions: list[dict] = field(default_factory=list)   # regions painted over (level 0)
    library_log: list[str] = field(default_factory=list)   # report only: counts, never text

    def removed_values(self) -> set[str]:
        """Values that must not survive anywhere in the output."""
        out: set[str] = set()
        for f in self.fields:
            if f.action in ("remove", "replace", "date", "clean") and f.value:
                if f.new_value is not None and f.value.strip() == f.new_value.strip():
                    continue
                out.add(f.value)
        return out

    def kept_values(self) -> list[str]:
        """Values the output holds on purpose (kept, transformed dates, replacements)."""
        return [f.new_value or f.value for f in self.fields
                if f.action in ("keep", "date", "replace")]

    def written_values(self) -> list[str]:
        """Values the tool wrote itself (pseudonyms, dummies, transformed dates)."""
        return [f.new_value for f in self.fields
                if f.action in ("date", "replace") and f.new_value]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.fields:
            counts[f.action] = counts.get(f.action, 0) + 1
        return counts

    def run_edits(self, image: str) -> dict[int, ReplaceRun]:
        return {e.run: e for e in self.edits if isinstance(e, ReplaceRun) and e.image == image}

    def run_patches(self, image: str) -> dict[int, PatchRun]:
        return {e.run: e for e in self.edits if isinstance(e, PatchRun) and e.image == image}

    def redactions(self) -> list[RedactImage]:
        """The regions painted through the pyramid (`--regions`)."""
        return [e for e in self.edits if isinstance(e, RedactImage) and not e.label_area]

    def label_areas(self) -> list[RedactImage]:
        """Overviews whose label area was blanked."""
        return [e for e in self.edits if isinstance(e, RedactImage) and e.label_area]

    def new_images(self) -> list[ReplaceImage | RedactImage]:
        """Synthesized labels and blanked overviews."""
        return [e for e in self.edits if isinstance(e, ReplaceImage)] + self.label_areas()


@dataclass
class Result:
    source: Path
    pseudonym: str = ""
    output: Path | None = None
    plan: Plan | None = None
    status: str = "ok"        # ok | failed (verification) | error (unreadable input, I/O)
    message: str = ""
    zeroed_bytes: int = 0
    undo: Path | None = None     # in place: the undo record its caller forgets (keep_undo)
    failed: Path | None = None   # what failed when it is not the input (the output folder)
