"""Labels, overviews and thumbnails, decided by their pixels.

Before a slide is planned, its label, overview (macro) and thumbnail are looked at: every
barcode is decoded (zxing-cpp, then zbar) and, when OCR is installed, the label's and the
overview's text is read. What they show, and the identifiers the format's label metadata holds
(an Aperio Barcode, the NDPI Reference, DICOM BarcodeValue and LabelText, MIRAX's barcode),
joins the slide's removed values: removed from every other field and searched for in every
output byte. An image that is to be kept but shows a barcode or text is not released as it is:
a label is dropped, an overview redacted (`--strict`: the slide fails instead). A label to be
replaced gets a synthesized one (the pseudonym as text and as a Data Matrix); an overview to be
redacted gets its label area blanked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import SlideError
from .model import LABEL_AREA, Field, Image, Naming, Plan, RedactImage, ReplaceImage
from .policy import Policy

if TYPE_CHECKING:
    import numpy as np

CHECKED_ROLES = ("label", "macro", "overview", "thumbnail")
TEXT_ROLES = ("label", "macro", "overview")     # read with OCR (a thumbnail shows tissue)
MIN_FORBIDDEN = 4                                # shorter values would match everywhere
WORDLIKE = re.compile(r"[A-Za-z0-9]{2,}")         # OCR lines of punctuation are noise


@dataclass
class ImageCheck:
    image: Image
    pixels: np.ndarray
    barcodes: list           # images.barcodes.Barcode
    texts: list[str] | None  # None: OCR not run

    @property
    def shows_something(self) -> bool:
        return bool(self.barcodes) or bool(self.texts)


@dataclass
class SlideChecks:
    images: list[ImageCheck]
    label_values: list[str]
    ocr_ran: bool
    undecodable: list[Image] = field(default_factory=list)   # could not be looked at

    def of(self, index: str) -> ImageCheck | None:
        return next((c for c in self.images if c.image.index == index), None)


def examine(adapter: Any, slide: Any, policy: Policy) -> SlideChecks:
    from .images import ocr
    from .images.barcodes import decode_all

    read_text = policy.ocr and ocr.available()
    checks = []
    undecodable = []
    for image in adapter.images(slide):
        if image.role not in CHECKED_ROLES:
            continue
        pixels = picture_or_none(adapter.pixels(slide, image))
        if pixels is None:
            undecodable.append(image)
            continue
        # text is read where it decides something: on an image that is to be kept
        texts = None
        if read_text and image.role in TEXT_ROLES and policy.image_action(image.role) != "drop":
            texts = [line for line in ocr.read_text(pixels) or [] if WORDLIKE.search(line)]
        released = policy.image_action(image.role) != "drop"
        checks.append(ImageCheck(image, pixels, decode_all(pixels, faint=released), texts))
    return SlideChecks(checks, [v for v in adapter.label_values(slide) if v.strip()], read_text,
                       undecodable)


def decide(adapter: Any, slide: Any, policy: Policy, checks: SlideChecks,
           naming: Naming) -> tuple[Policy, list[Field], list[str], list]:
    """The slide's own policy (what its images showed is forbidden everywhere; images that
    failed their checks dropped or redacted), the fields to report, the warnings, and the new
    images: a synthesized label for every label to be replaced, the blanked picture for every
    overview to be redacted."""
    fields: list[Field] = []
    warnings: list[str] = []
    forbidden = {v.strip().lower() for v in checks.label_values if len(v.strip()) >= MIN_FORBIDDEN}
    overrides: dict[str, str] = {}
    reference = SlideReference(adapter, slide)
    for image in checks.undecodable:
        if policy.image_action(image.role) != "drop":
            overrides[image.index] = "drop"
            warnings.append(f"the {image.role} image ({image.index}) could not be decoded to be "
                            "checked: dropped")
    for check in checks.images:
        image = check.image
        for code in check.barcodes:
            fields.append(Field(f"barcode:{code.symbology}", image.index, code.value, "remove",
                                why=f"decoded from the {image.role} image"))
            if len(code.value.strip()) >= MIN_FORBIDDEN:
                forbidden.add(code.value.strip().lower())
        for line in check.texts or []:
            fields.append(Field("ocr:text", image.index, line, "remove",
                                why=f"text read on the {image.role} image"))
            forbidden |= {w.lower() for w in line.split() if len(w) >= MIN_FORBIDDEN}
        wanted = policy.image_action(image.role)
        if image.role == "thumbnail" and wanted != "drop" and not reference.shows(check):
            overrides[image.index] = "drop"
            warnings.append(f"the thumbnail image ({image.index}) {reference.why}: dropped")
            continue
        if not check.shows_something or wanted in ("drop", "replace", "redact"):
            continue
        what = _what(check)
        if policy.strict:
            raise SlideError(f"--strict: the {image.role} image ({image.index}) shows {what}; "
                             "it cannot be released as it is")
        instead = "redact" if image.role in ("macro", "overview") else "drop"
        overrides[image.index] = instead
        warnings.append(f"the {image.role} image ({image.index}) shows {what}: "
                        f"{'redacted' if instead == 'redact' else 'dropped'} instead of kept")
    if policy.label != "drop" and not any(c.image.role == "label" for c in checks.images) \
            and not any(img.role == "label" for img in adapter.images(slide)):
        warnings.append(f"--label {policy.label}: nothing to {policy.label}: "
                        f"{getattr(adapter, 'no_label', 'the slide has no label image')}")
    slide_policy = replace(policy, forbidden=frozenset(forbidden),
                           image_overrides=tuple(overrides.items()))
    edits = []
    for check in checks.images:
        action = slide_policy.image_action_for(check.image.index, check.image.role)
        if action == "replace":
            edits.append(_new_label(check, naming))
        elif action == "redact":
            edit, why = _blanked(adapter, slide, check, slide_policy)
            warnings.append(why)
            if edit is None:
                overrides[check.image.index] = "drop"
            else:
                edits.append(edit)
    slide_policy = replace(slide_policy, image_overrides=tuple(overrides.items()))
    unread = _kept_unread(checks, slide_policy)
    if unread:
        warnings.append(unread)
    return slide_policy, fields, warnings, edits


def picture_or_none(pixels: Any) -> Any:
    """Decoded pixels that are a picture (rows, columns and at most four samples, none of them
    empty), or None: a decoder may hand back anything for a damaged image."""
    shape = getattr(pixels, "shape", ())
    if len(shape) not in (2, 3) or 0 in shape or (len(shape) == 3 and shape[2] > 4):
        return None
    return pixels


class SlideReference:
    """The slide's smallest level, decoded once when a thumbnail is to be compared with it."""

    def __init__(self, adapter: Any, slide: Any):
        self.adapter, self.slide = adapter, slide
        self.picture: Any = None
        self.loaded = False
        self.why = ""

    def shows(self, check: ImageCheck) -> bool:
        """The checked image shows the slide (else `why` says what is wrong)."""
        from .images.likeness import resembles

        if not self.loaded:
            self.picture = picture_or_none(self.adapter.smallest_level(self.slide))
            self.loaded = True
        if self.picture is None:
            self.why = "could not be compared with the slide's smallest level"
            return False
        if not resembles(check.pixels, self.picture):
            self.why = ("does not show the slide (its pixels do not match the smallest level: "
                        "a label or macro photograph?)")
            return False
        return True


def _kept_unread(checks: SlideChecks, policy: Policy) -> str | None:
    """A warning when a label or overview goes out as photographed (kept, or redacted: only
    its label area is blanked) without OCR having read it: handwriting and printed text that
    is no barcode then stays unchecked."""
    if checks.ocr_ran:
        return None
    kept = [c.image for c in checks.images if c.image.role in TEXT_ROLES
            and policy.image_action_for(c.image.index, c.image.role) in ("keep", "redact")]
    if not kept:
        return None
    why = ("--no-ocr" if not policy.ocr else
           "it is not installed: the ocr extra and tesseract-ocr read text on labels and overviews")
    images = ", ".join(f"the {image.role} image ({image.index})" for image in kept)
    return f"OCR was not run ({why}); released without reading their text: {images}"


def _new_label(check: ImageCheck, naming: Naming) -> ReplaceImage:
    from .images.labels import synthesize_label

    image = check.image
    channels = 1 if check.pixels.ndim == 2 else 3
    try:
        label = synthesize_label(check.pixels.shape[1], check.pixels.shape[0], naming.pseudonym,
                                 channels)
    except ValueError as exc:
        raise SlideError(f"the label ({image.index}) is too small to replace: {exc}") from None
    return ReplaceImage(image.index, label)


def _blanked(adapter: Any, slide: Any, check: ImageCheck,
             policy: Policy) -> tuple[RedactImage | None, str]:
    """The overview with its label area blanked, or None (then it is dropped) when no label
    area can be found: an overview is never kept unblanked when it was to be redacted."""
    from .images.overview import OverviewNotCleared, redact_overview

    image = check.image
    vendor = adapter.label_boxes(slide, image, check.pixels)
    try:
        pixels, boxes, reason = redact_overview(check.pixels, region=policy.macro_region,
                                                barcodes=check.barcodes, vendor_boxes=vendor)
    except OverviewNotCleared as exc:
        return None, f"the {image.role} image ({image.index}): {exc}: dropped"
    if not boxes:
        return None, (f"the {image.role} image ({image.index}): {reason}: dropped (give "
                      "--macro-region to say where its label is)")
    return (label_area(image, boxes, pixels, reason),
            f"the {image.role} image ({image.index}) redacted: {reason}")


def label_area(image: Image, boxes: list, pixels: np.ndarray, reason: str) -> RedactImage:
    """A RedactImage of an overview's label area: the boxes blanked (pixels, for reports and
    verification), the picture with them blanked (`_pixels`, for the container)."""
    height, width = pixels.shape[:2]
    return RedactImage(image.index, {
        "kind": LABEL_AREA, "role": image.role, "boxes": [list(map(int, b)) for b in boxes],
        "size": [width, height], "why": reason, "_pixels": pixels})


def _what(check: ImageCheck) -> str:
    parts = []
    if check.barcodes:
        parts.append("a barcode (" + ", ".join(sorted({c.symbology for c in check.barcodes})) + ")")
    if check.texts:
        parts.append("text")
    return " and ".join(parts)


def report_entries(plan: Plan) -> list[dict]:
    """Per label, macro/overview and thumbnail: what became of it, the symbologies decoded on
    it and how many lines of text OCR read there (never the values), and for a redacted
    overview the boxes blanked (pixels of the image)."""
    areas = {e.image: e.regions for e in plan.label_areas()}
    replaced = {e.image for e in plan.edits if isinstance(e, ReplaceImage)}
    out = []
    for image in plan.images:
        if image.role not in ("label", "macro", "overview", "thumbnail"):
            continue
        found = [f for f in plan.fields if f.location == image.index]
        entry = {"image": image.index, "role": image.role, "action": image.action,
                 "barcodes": sorted(f.name.split(":", 1)[1] for f in found
                                    if f.name.startswith("barcode:")),
                 "text_lines": sum(f.name == "ocr:text" for f in found)}
        if image.index in replaced:
            entry["new"] = "synthesized label: the pseudonym as text and as a Data Matrix"
        if image.index in areas:
            entry["blanked"] = {"boxes": areas[image.index]["boxes"],
                                "size": areas[image.index]["size"],
                                "why": areas[image.index]["why"]}
        out.append(entry)
    return out
