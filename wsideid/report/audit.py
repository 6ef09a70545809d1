"""The audit report: options, catalogs, and per slide what was done. Never an original name or
value: slides are named by their released paths, files left out by pseudonymous paths."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__, catalog
from ..batch import without_source  # noqa: F401 - where reports have always found it


def build(slides: list[dict], options: dict, not_slides: list[dict] | None = None) -> dict:
    """The report of a run from its slides' entries (batch.entry_of), in a stable order:
    released slides by path, then failures."""
    slides = sorted(slides, key=lambda e: (e.get("path") is None, e.get("path") or "",
                                           e.get("message") or ""))
    used = sorted({name for e in slides for name in e.get("catalogs", [])})
    report = {"tool": "wsideid", "version": __version__,
              "run": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "options": options,
              "catalogs": {name: catalog.describe(name) for name in used},
              "slides": slides,
              "summary": {"ok": sum(e["status"] == "ok" for e in slides),
                          "failed": sum(e["status"] != "ok" for e in slides)}}
    if not_slides:
        report["not_slides"] = sorted(not_slides, key=lambda e: e["path"])
    return report


def write(path: Path, report: dict) -> None:
    """Write the report whole or not at all: a hidden file beside it, flushed to disk, then
    renamed over it (a failed write or a kill leaves no partial report)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(report, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
