"""The audit report: options, and per slide what was done. Never an original name or value."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..model import Plan, ReplaceImage, Result


def build(results: list[Result], options: dict) -> dict:
    slides = []
    for r in results:
        entry: dict = {"pseudonym": r.pseudonym or None, "status": r.status,
                       "output": r.output.name if r.output else None}
        if r.status != "ok":
            entry["message"] = without_source(r.message, r.source)
        if r.plan is not None:
            entry["format"] = r.plan.format
            entry["images"] = [img.public() for img in r.plan.images]
            entry["fields"] = [f.public() for f in r.plan.fields]
            entry["actions"] = r.plan.counts()
            entry["warnings"] = r.plan.warnings
            if r.plan.regions:
                entry["regions"] = r.plan.regions
                entry["redacted"] = [e.public() for e in r.plan.redactions()]
            pictures = associated_images(r.plan)
            if pictures:
                entry["associated"] = pictures
        entry["zeroed_bytes"] = r.zeroed_bytes
        slides.append(entry)
    return {"tool": "wsideid", "version": __version__,
            "run": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "options": options, "slides": slides,
            "summary": {"ok": sum(r.status == "ok" for r in results),
                        "failed": sum(r.status != "ok" for r in results)}}


def associated_images(plan: Plan) -> list[dict]:
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


def without_source(message: str, source: Path) -> str:
    """A failure message as the report may keep it: the input's path and name (which a
    library's message may quote) replaced by <input>."""
    stem = source.name.split(".")[0]
    for text in (str(source), str(source.parent), source.name, stem):
        if len(text) >= 3:
            message = message.replace(text, "<input>")
    return message


def write(path: Path, report: dict) -> None:
    """Write the report whole or not at all (a failed write leaves no partial file)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
