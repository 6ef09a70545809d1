"""The audit report: options, catalogs, and per slide what was done. Never an original name or
value: slides are named by their released paths, files left out by pseudonymous paths."""
from __future__ import annotations

import errno
import json
import os
import textwrap
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


def write_stream(path: Path, options: dict, catalogs: list[str], slides, summary: dict,
                 not_slides: list[dict] | None = None) -> None:
    """The report of a batch, written entry by entry (tens of thousands of slides need not be
    in memory at once): the same document as `build`, whole or not at all."""
    head = {"tool": "wsideid", "version": __version__,
            "run": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "options": options, "catalogs": {name: catalog.describe(name) for name in catalogs}}

    def lines():
        yield json.dumps(head, indent=2)[:-2] + ',\n  "slides": ['
        first = True
        for entry in slides:
            yield ("\n" if first else ",\n") + textwrap.indent(json.dumps(entry, indent=2), "    ")
            first = False
        yield ("\n  ]" if not first else "]")
        if not_slides:
            body = json.dumps(sorted(not_slides, key=lambda e: e["path"]), indent=2)
            yield ',\n  "not_slides": ' + body.replace("\n", "\n  ")
        yield ',\n  "summary": ' + json.dumps(summary) + "\n}\n"

    _write_whole(path, lines())


def write(path: Path, report: dict) -> None:
    """Write the report whole or not at all."""
    _write_whole(path, [json.dumps(report, indent=2) + "\n"])


def _write_whole(path: Path, pieces) -> None:
    """Written into an unnamed file of the report's folder (O_TMPFILE: a kill while writing
    leaves nothing behind, not even a hidden file), flushed to disk, given a hidden name and
    renamed over the report (a failed write or a kill leaves no partial report). Where the
    file system has no unnamed files, the hidden file is written by name."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        fd = _unnamed_file(path.parent)
        with (os.fdopen(fd, "w", encoding="utf-8") if fd is not None
              else open(tmp, "w", encoding="utf-8")) as fh:
            for piece in pieces:
                fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
            if fd is not None:
                tmp.unlink(missing_ok=True)   # a leftover of an older run
                _link_unnamed(fh.fileno(), tmp)
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unnamed_file(folder: Path) -> int | None:
    """A file descriptor of a new file without a name in `folder`, or None where O_TMPFILE is
    not supported (the file system or the kernel)."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return None
    try:
        return os.open(folder, flag | os.O_WRONLY, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


def _link_unnamed(fd: int, name: Path) -> None:
    """Give an O_TMPFILE file a name: linkat(2) of /proc/self/fd/N with AT_SYMLINK_FOLLOW
    (os.link does not pass the flag through /proc's link)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_symlink_follow = -100, 0x400
    if libc.linkat(at_fdcwd, f"/proc/self/fd/{fd}".encode(), at_fdcwd, os.fsencode(name),
                   at_symlink_follow) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(name))

