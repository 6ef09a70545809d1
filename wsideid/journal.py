"""What an output folder knows about itself: which slides are released there, and who writes.

    OUTDIR/.wsideid/lock           held (flock, exclusive) by the run writing to OUTDIR for as
                                   long as it runs: a second run on the same folder is refused
    OUTDIR/.wsideid/run            the current run's id; every slide task holds it shared while
                                   it works, so that a new run first waits for the tasks of a
                                   killed run (a Dask task cannot be stopped) and only then
                                   removes what they left behind
    OUTDIR/.wsideid/journal.jsonl  one JSON object a line: a header per run (tool version, a
                                   check value of the key, a digest of the options), then one
                                   record per released slide, appended and fsynced after the
                                   slide was verified and renamed into place

The journal names no input: a slide is known by keyed digests of its input paths and of their
sizes and modification times, and by its released paths and report entry, which are
pseudonymous like everything else under OUTDIR. Locks are released by the kernel when a
process dies, so `kill -9` never leaves a stale lock behind.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import __version__

STATE = ".wsideid"
JOURNAL = "journal.jsonl"
TEMPORARY_SUFFIXES = (".partial", ".renaming")
TEMPORARY_PREFIXES = (".wsideid-probe-",)
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class Busy(Exception):
    """Another run holds the output folder."""


class Mismatch(Exception):
    """The output folder holds slides released under another key or other options."""


class JournalError(OSError):
    """The journal cannot be written (the run stops: a release it cannot record is lost)."""


class Superseded(Exception):
    """A task of a run that is no longer the output folder's current run (killed and restarted)."""


def brief_of(entry: dict) -> dict:
    """What a run keeps in memory of a slide's report entry (the entry itself stays in the
    journal: a report of tens of thousands of slides does not fit in memory)."""
    return {"path": entry.get("path"), "pseudonym": entry.get("pseudonym"),
            "status": entry.get("status"), "format": entry.get("format"),
            "actions": entry.get("actions", {}),
            "dropped": sum(1 for i in entry.get("images", []) if i.get("action") == "drop"),
            "catalogs": entry.get("catalogs", []), "message": entry.get("message")}


@dataclass
class Record:
    job: str                     # keyed digest of the slide's input paths
    state: str                   # keyed digest of their sizes and modification times
    outputs: list[list]          # [released path relative to OUTDIR, size, mtime_ns] per file
    survey: dict = field(default_factory=dict)   # how the slide was named (pseudonymous)
    entry: dict | None = None    # its report entry (None once written: read back by offset)
    run: str = ""
    offset: int = -1             # where its line starts in the journal
    brief: dict = field(default_factory=dict)
    stamp: str = ""              # keyed digest of its files' names, sizes and times, not folders

    def line(self) -> str:
        return json.dumps({"type": "slide", "job": self.job, "state": self.state, "run": self.run,
                           "stamp": self.stamp,
                           "survey": self.survey, "outputs": self.outputs, "entry": self.entry},
                          sort_keys=True, separators=(",", ":")) + "\n"

    def intact(self, outdir: Path) -> bool:
        """Every released file is still there as it was written (size and modification time,
        the quick check rsync and make use)."""
        for rel, size, mtime_ns in self.outputs:
            try:
                st = os.lstat(outdir / rel)
            except OSError:
                return False
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                return False
        return bool(self.outputs)


def stat_outputs(outdir: Path, files: list[Path]) -> list[list]:
    out = []
    for path in files:
        st = os.lstat(path)
        out.append([path.relative_to(outdir).as_posix(), st.st_size, st.st_mtime_ns])
    return out


class Journal:
    """The journal and locks of one output folder, held by the run writing to it."""

    def __init__(self, outdir: Path):
        self.outdir = outdir
        self.state = outdir / STATE
        self.path = self.state / JOURNAL
        self.run_id = secrets.token_hex(8)
        self.records: dict[str, Record] = {}
        self._stamps: dict[str, list[str]] | None = None   # stamp -> jobs (Journal.moved)
        self._lock_fd: int | None = None
        self._fd: int | None = None

    # ---- opening ---------------------------------------------------------------------------
    def open(self, key_check: str, settings: str, waiting: Callable[[], None] = lambda: None) -> None:
        """Lock the folder for this run, read what earlier runs released, check that they used
        the same key and options, wait for the tasks of a killed run, remove what they left
        half-written, and start this run's header."""
        self.state.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            if exc.errno in NO_LOCKS:
                raise OSError(exc.errno, "the file system of the output folder does not support "
                                         "locks (flock)") from None
            raise Busy("another wsideid run is writing to this output folder") from None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        headers = self._read()
        # first of all, what interrupted runs left half-written goes (whatever this run is)
        self._new_run(waiting)
        if headers and not self.records:
            # no slide was ever released here: nothing of another key or options to mix with
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            headers = []
        if headers:
            first = headers[0]
            if first.get("key") != key_check:
                raise Mismatch("it holds slides released under another key (give that run's "
                               "--key-file, or use a new output folder)")
            if first.get("settings") != settings:
                raise Mismatch("it holds slides released with other options or another "
                               "--mapping (repeat that run's options, or use a new output folder)")
        self._append(json.dumps({"type": "run", "run": self.run_id, "version": __version__,
                                 "key": key_check, "settings": settings,
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                sort_keys=True) + "\n")

    def _read(self) -> list[dict]:
        """Every record of earlier runs (the latest per slide, without its report entry,
        which is read back by offset when a report is written); a line cut short by a kill
        is removed (it was never acknowledged)."""
        headers = []
        end = 0
        with open(self.path, "rb") as fh:
            while True:
                start = fh.tell()
                line = fh.readline()
                if not line.endswith(b"\n"):
                    break
                end = fh.tell()
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("type") == "run":
                    headers.append(obj)
                elif obj.get("type") == "slide":
                    self.records[obj["job"]] = Record(obj["job"], obj["state"], obj["outputs"],
                                                      obj.get("survey", {}), None, obj.get("run", ""),
                                                      start, brief_of(obj.get("entry") or {}),
                                                      obj.get("stamp", ""))
        if end != os.fstat(self._fd).st_size:
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        return headers

    def entry(self, job: str) -> dict:
        """A released slide's report entry, read back from its journal line."""
        record = self.records[job]
        if record.entry is not None:
            return record.entry
        chunks = []
        pos = record.offset
        while True:
            chunk = os.pread(self._fd, 1 << 16, pos)
            if not chunk:
                break
            cut = chunk.find(b"\n")
            if cut >= 0:
                chunks.append(chunk[:cut])
                break
            chunks.append(chunk)
            pos += len(chunk)
        return json.loads(b"".join(chunks))["entry"]

    def _new_run(self, waiting: Callable[[], None]) -> None:
        """Make this run the current one: wait until no task of an earlier run works in the
        folder, record this run's id, and remove every temporary file left behind."""
        fd = os.open(self.state / "run", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.run_id.encode() + b"\n", 0)
            os.fsync(fd)
            remove_temporary(self.outdir)
        finally:
            os.close(fd)   # closing releases the lock

    def tidy(self) -> None:
        """At the end of a run: wait for every task, then remove what a task that died (a
        crashed worker) left behind."""
        fd = os.open(self.state / "run", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            remove_temporary(self.outdir)
        finally:
            os.close(fd)

    # ---- records ---------------------------------------------------------------------------
    def done(self, job: str, state: str) -> Record | None:
        """The record of a slide released earlier and still intact, or None."""
        record = self.records.get(job)
        if record is None or record.state != state or not record.intact(self.outdir):
            return None
        return record

    def moved(self, job: str, stamp: str, jobs: set[str]) -> Record | None:
        """An intact release of another input whose files have this slide's names, sizes and
        times (`stamp`) and that is not among this run's `jobs`: the same slide released
        earlier from another folder (moved since), or a copy of it elsewhere."""
        if not stamp:
            return None
        if self._stamps is None:    # built once per run's planning (tens of thousands of slides)
            self._stamps = {}
            for record in self.records.values():
                if record.stamp:
                    self._stamps.setdefault(record.stamp, []).append(record.job)
        for other in self._stamps.get(stamp, []):
            record = self.records.get(other)
            if (record is not None and other != job and other not in jobs
                    and record.intact(self.outdir)):
                return record
        return None

    def append(self, record: Record) -> list[str]:
        """Record a released slide; returns the files an earlier release of the same slide
        (from other inputs: they changed) left under other names, which are its to remove."""
        record.run = self.run_id
        old = self.records.get(record.job)
        try:
            offset = os.fstat(self._fd).st_size
            self._append(record.line())
        except OSError as exc:
            raise JournalError(exc.errno, f"cannot write the journal {self.path}: "
                                          f"{exc.strerror or exc}") from None
        record.offset, record.brief, record.entry = offset, brief_of(record.entry or {}), None
        self.records[record.job] = record
        self._stamps = None
        if old is None:
            return []
        kept = {o[0] for r in self.records.values() for o in r.outputs}
        return sorted({o[0] for o in old.outputs} - kept)

    def _append(self, line: str) -> None:
        data = line.encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(errno.EIO, "short write to the journal")
        os.fsync(self._fd)

    def close(self) -> None:
        """Release the folder. A folder where no slide was ever released keeps no state (a
        run that only failed leaves OUTDIR as it found it, apart from the report)."""
        if self._lock_fd is not None and not self.records:
            shutil.rmtree(self.state, ignore_errors=True)
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def remove_temporary(outdir: Path) -> int:
    """Remove every hidden temporary file or folder a write leaves until it is renamed into
    place (`.NAME.xxxx.partial`, `.n.xxxx.renaming`, probes), anywhere under OUTDIR."""
    removed = 0
    for folder, dirs, files in os.walk(outdir):
        if Path(folder) == outdir and STATE in dirs:
            dirs.remove(STATE)
        for name in list(dirs) + files:
            if not (name.startswith(".") and (name.endswith(TEMPORARY_SUFFIXES)
                                              or name.startswith(TEMPORARY_PREFIXES))):
                continue
            path = Path(folder) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def exclusive(outdir: Path) -> Iterator[None]:
    """For commands that write to OUTDIR without a journal (convert, redact): hold the
    folder's lock while they run (refused with Busy while another run holds it) and first
    remove the temporary files an interrupted run left there (they may hold a whole copy of
    an input). The state folder goes again unless a journal lives there."""
    state = outdir / STATE
    made = not state.exists()
    state.mkdir(exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise Busy("another wsideid run is writing to this output folder") from None
        remove_temporary(outdir)
        yield
    finally:
        os.close(fd)
        if made and not (state / JOURNAL).exists():
            shutil.rmtree(state, ignore_errors=True)


@contextmanager
def task_lease(outdir: Path, run_id: str) -> Iterator[None]:
    """Held by a slide task while it works in OUTDIR: a shared lock on the run file, and the
    check that its run is still the current one (a task of a killed run that starts late
    does nothing)."""
    fd = os.open(outdir / STATE / "run", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        current = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if current != run_id:
            raise Superseded("a newer run has taken over the output folder")
        yield
    finally:
        os.close(fd)
