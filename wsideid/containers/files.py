"""The file layer every container writes through: kernel copies, zeroing (holes punched where
the file system can), durable writes, and outputs that appear only whole.

An output is built under a hidden name in its destination folder (`Staging`), made durable,
verified, and only then renamed into place; discarding it leaves nothing behind.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from ..errors import SlideError

ZERO_CHUNK = b"\x00" * (1 << 20)
SYNC_FILE_RANGE_WRITE = 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
PUNCH_MIN = 1 << 20
PARTIAL = ".partial"


# ---- copying --------------------------------------------------------------------------------

def copy_file(src_path, dst_fd: int) -> None:
    """Kernel-side copy of the data extents (what `cp` does); holes stay holes."""
    with open(src_path, "rb") as fsrc:
        size = os.fstat(fsrc.fileno()).st_size
        os.ftruncate(dst_fd, size)
        for start, end in data_extents(fsrc.fileno(), 0, size):
            copy_range(fsrc.fileno(), dst_fd, start, end)


def copy_range(src_fd: int, dst_fd: int, start: int, end: int, at: int | None = None) -> None:
    """Copy bytes [start, end) of src to offset `at` (default: the same offset) of dst, in the
    kernel where possible, falling back to a buffered copy."""
    pos = start
    out = start if at is None else at
    try:
        while pos < end:
            n = os.copy_file_range(src_fd, dst_fd, end - pos, pos, out)
            if n == 0:
                break
            pos += n
            out += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while pos < end:
        chunk = os.pread(src_fd, min(1 << 24, end - pos), pos)
        if not chunk:
            raise SlideError("input shrank while being copied")
        os.pwrite(dst_fd, chunk, out)
        pos += len(chunk)
        out += len(chunk)


def data_extents(fd: int, start: int, end: int):
    """The parts of [start, end) that hold data (holes of a sparse file are skipped)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole after pos
                return
            yield pos, end  # no SEEK_DATA on this file system: all of it is data
            return
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole
        pos = hole


def read_sequentially(fd: int) -> None:
    """Tell the kernel the file is read front to back (larger read-ahead, as `cp` asks)."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (OSError, AttributeError):
        pass


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file out now (Linux sync_file_range), so that the
    final fsync only waits for what is left. A no-op where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), SYNC_FILE_RANGE_WRITE)
    except (OSError, AttributeError):
        pass


# ---- zeroing --------------------------------------------------------------------------------

def zero_gaps(fd: int, starts: np.ndarray, ends: np.ndarray) -> int:
    """Overwrite with zeros every byte below max(ends) that no [start, end) covers."""
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    e = np.maximum.accumulate(ends[order])
    gap_starts = e[:-1]
    gap_ends = s[1:]
    mask = gap_ends > gap_starts
    total = 0
    if s[0] > 0:
        total += zero_range(fd, 0, int(s[0]))
    for a, b in zip(gap_starts[mask].tolist(), gap_ends[mask].tolist()):
        total += zero_range(fd, a, b)
    return total


def zero_range(fd: int, start: int, end: int) -> int:
    """Make [start, end) read as zeros: punch a hole (no write, stays sparse) where the file
    system can, else write zeros over the parts that hold data."""
    if end - start >= PUNCH_MIN and _punch_hole(fd, start, end - start):
        return end - start
    for a, b in data_extents(fd, start, end):
        pos = a
        while pos < b:
            n = min(len(ZERO_CHUNK), b - pos)
            os.pwrite(fd, ZERO_CHUNK[:n], pos)
            pos += n
    return end - start


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0
    except (OSError, AttributeError):
        return False


def uncovered(ranges, size: int):
    """The parts of [0, size) that no [start, end) of `ranges` covers, in order."""
    pos = 0
    for start, end in sorted(ranges):
        if start > pos:
            yield pos, min(start, size)
        pos = max(pos, end)
    if pos < size:
        yield pos, size


# ---- durable writes and renames -------------------------------------------------------------

def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) with `data`, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Replace a file's content whole: a hidden new file beside it, then a rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL}")
    try:
        write_new(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rename_all(folder: Path, renames: list[tuple[str, str]]) -> None:
    """Rename files within a folder in two steps, so that a name another file is about to
    leave is never overwritten (Data0001.dat -> Data0000.dat while Data0000.dat -> ...)."""
    moves = [(a, b) for a, b in renames if a != b]
    token = secrets.token_hex(4)
    for n, (a, _) in enumerate(moves):
        os.rename(folder / a, folder / f".{n}.{token}.renaming")
    for n, (_, b) in enumerate(moves):
        os.rename(folder / f".{n}.{token}.renaming", folder / b)


class Staging:
    """A hidden place in the destination folder where an output is built: a file
    (`.NAME.xxxx.partial`) or a folder holding the output's files. `release` renames what
    was built to its final name(s) durably; `discard` removes it."""

    def __init__(self, folder: Path, name: str, kind: str = "file"):
        self.folder = folder
        self.name = name
        self.kind = kind
        self.path = folder / f".{name}.{secrets.token_hex(4)}{PARTIAL}"
        if kind == "folder":
            self.path.mkdir()

    def open_file(self) -> int:
        """The staged file, created empty (file staging)."""
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)

    def release(self, moves: list[tuple[str, str]] | None = None) -> Path:
        """File staging: rename the file to NAME. Folder staging: rename each (entry, final
        name) of `moves` out of the staging folder into the destination, in order, replacing
        an earlier run's output of the same name; then remove the staging folder."""
        if self.kind == "file":
            target = self.folder / self.name
            os.replace(self.path, target)
            fsync_dir(self.folder)
            return target
        moves = moves or [(self.name, self.name)]
        for _, final in moves:   # a marker file (NAME.mrxs) never names a half-replaced folder
            target = self.folder / final
            if target.is_file() or target.is_symlink():
                target.unlink()
        targets = []
        for entry, final in moves:
            target = self.folder / final
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(self.path / entry, target)
            targets.append(target)
        self.path.rmdir()
        fsync_dir(self.folder)
        return targets[-1]

    def discard(self) -> None:
        if self.kind == "folder":
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)


# ---- patching a file: directly, or planned first and applied with an undo record ------------

class DirectWrites:
    """Writes that go straight to the file (an output being built: nothing to undo)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data: bytes, offset: int) -> None:
        os.pwrite(self.fd, data, offset)

    def zero_gaps(self, starts: np.ndarray, ends: np.ndarray) -> int:
        return zero_gaps(self.fd, starts, ends)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)


UNDO_PIECE = 16 << 20
ZERO_PIECE = 1 << 20
_ZEROS = bytes(ZERO_PIECE)


def _not_zero(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The pieces of [start, end) that hold a byte other than zero (adjacent pieces merged):
    zeros need neither zeroing nor saving."""
    out: list[tuple[int, int]] = []
    for piece in range(start, end, ZERO_PIECE):
        stop = min(piece + ZERO_PIECE, end)
        if os.pread(fd, stop - piece, piece) == _ZEROS[:stop - piece]:
            continue
        if out and out[-1][1] == piece:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((piece, stop))
    return out


def data_segments(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The parts of [start, end) of the file that hold data, holes left out (SEEK_DATA and
    SEEK_HOLE; a file system without them reports the whole range as data)."""
    out = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:   # only a hole from here to the end of the file
                break
            return out + [(pos, end)]      # no SEEK_DATA here: all of it counts as data
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        out.append((data, hole))
        pos = hole
    return out


class PlannedWrites:
    """Writes collected first and applied later (`apply`), so that everything they will
    overwrite can be saved in an undo record before the first byte changes (in place)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.ops: list[tuple[str, int, int, bytes]] = []   # (kind, start, end, data)

    def write(self, data: bytes, offset: int) -> None:
        self.ops.append(("write", offset, offset + len(data), bytes(data)))

    def zero_gaps(self, starts: np.ndarray, ends: np.ndarray) -> int:
        order = np.argsort(starts, kind="stable")
        s, e = starts[order], np.maximum.accumulate(ends[order])
        gaps = [(0, int(s[0]))] if s[0] > 0 else []
        gaps += [(int(a), int(b)) for a, b in zip(e[:-1].tolist(), s[1:].tolist()) if b > a]
        for a, b in gaps:
            # a hole of a sparse file already reads as zeros: neither zeroed nor saved in the
            # undo record (a 4 GB hole of an NDPI was read into memory to be saved)
            for start, end in data_segments(self.fd, a, b):
                for piece, stop in _not_zero(self.fd, start, end):
                    self.ops.append(("zero", piece, stop, b""))
        return sum(b - a for a, b in gaps)

    def truncate(self, size: int) -> None:
        self.ops.append(("truncate", size, size, b""))

    def ranges(self) -> list[tuple[int, int]]:
        """The byte ranges the writes will change (a truncation changes what lies after it)."""
        size = os.fstat(self.fd).st_size
        out = []
        for kind, start, end, _ in self.ops:
            if kind == "truncate":
                if start < size:
                    out.append((start, size))
            else:
                out.append((start, min(end, max(size, end))))
        return out

    def apply(self) -> None:
        for kind, start, end, data in self.ops:
            if kind == "write":
                os.pwrite(self.fd, data, start)
            elif kind == "zero":
                zero_range(self.fd, start, end)
            else:
                os.ftruncate(self.fd, start)


UNDO_SUFFIX = ".wsideid-undo"
MANIFEST = "manifest.json"


def undo_record_for(path: Path) -> Path:
    """Where the undo record of an in-place change of `path` lives (beside it, hidden)."""
    return path.with_name(f".{path.name}{UNDO_SUFFIX}")


class Undo:
    """What an in-place change overwrites, saved and flushed before the change: byte ranges of
    files, whole small files, and renames. `restore` puts everything back exactly (also after a
    crash: a record left behind is restored by the next run); `discard` forgets it once the
    change is complete and verified. The record is a folder; its manifest, written last, says
    it is complete (a folder without one means nothing was changed yet)."""

    def __init__(self, record: Path):
        self.record = record
        self.files: list[dict] = []
        self.renames: list[tuple[str, str]] = []
        self._blobs = 0

    # -- building the record --------------------------------------------------------------------
    def keep_ranges(self, path: Path, ranges: list[tuple[int, int]]) -> None:
        self._ensure_folder()
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            saved = []
            for start, end in _merged(ranges):
                end = min(end, size)
                # saved a piece at a time: a large range never sits in memory whole
                for piece in range(start, end, UNDO_PIECE):
                    stop = min(piece + UNDO_PIECE, end)
                    blob = self._blob(os.pread(fh.fileno(), stop - piece, piece))
                    saved.append([piece, stop, blob])
        self.files.append({"path": str(path), "size": size, "ranges": saved})

    def keep_file(self, path: Path) -> None:
        self._ensure_folder()
        self.files.append({"path": str(path), "size": path.stat().st_size,
                           "whole": self._blob(path.read_bytes())})

    def rename(self, old: Path, new: Path) -> None:
        self.renames.append((str(old), str(new)))

    def seal(self) -> None:
        """Make the record durable before the first change: every saved byte first, then the
        manifest (renamed into place: a record has a manifest only when it is complete)."""
        import json

        self._ensure_folder()
        manifest = json.dumps({"files": self.files, "renames": self.renames}).encode()
        fsync_dir(self.record)          # the blobs' names are durable before the manifest
        write_new(self.record / "manifest.json.partial", manifest)
        os.replace(self.record / "manifest.json.partial", self.record / MANIFEST)
        fsync_dir(self.record)
        fsync_dir(self.record.parent)

    # -- using it -------------------------------------------------------------------------------
    def restore(self) -> None:
        restore(self.record)

    def discard(self) -> None:
        """Forget the record: the change is complete. The manifest goes first (durably), so a
        crash while the rest is removed leaves a record that says nothing was changed."""
        forget(self.record)

    def _ensure_folder(self) -> None:
        if not self.record.exists():
            self.record.mkdir()

    def _blob(self, data: bytes) -> str:
        name = f"{self._blobs:06d}.bin"
        self._blobs += 1
        write_new(self.record / name, data)
        return name


def forget(record: Path) -> None:
    """Remove an undo record without restoring anything: its manifest first, durably, then
    the saved bytes. Safe to repeat, and safe to interrupt at any point."""
    for name in (MANIFEST, MANIFEST + PARTIAL):
        try:
            os.unlink(record / name)
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            break
    if record.is_dir():
        fsync_dir(record)
    shutil.rmtree(record, ignore_errors=True)
    if record.is_symlink() or record.is_file():
        record.unlink(missing_ok=True)
    fsync_dir(record.parent)


class UndoRecordError(SlideError):
    """An undo record that cannot be used (damaged by hand): nothing was touched."""


def _load(record: Path) -> dict | None:
    """The manifest of a complete record, checked against its saved bytes before anything is
    changed; None when the record says nothing was changed (no manifest, or saved bytes
    missing: a record whose removal was interrupted)."""
    import json

    try:
        data = json.loads((record / MANIFEST).read_text(encoding="utf-8"))
        files = data["files"]
        renames = [(str(a), str(b)) for a, b in data["renames"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UndoRecordError(f"the undo record {record.name} of an interrupted in-place run "
                              f"cannot be read ({type(exc).__name__}); nothing was changed: "
                              "restore the slide from a copy, then remove the record") from None
    blobs = []
    for entry in files:
        if "whole" in entry:
            blobs.append((entry["whole"], entry["size"]))
        else:
            blobs += [(blob, end - start) for start, end, blob in entry["ranges"]]
    for blob, size in blobs:
        if "/" in blob or blob.startswith("."):
            raise UndoRecordError(f"the undo record {record.name} names a file outside itself")
        try:
            saved = (record / blob).stat().st_size
        except FileNotFoundError:
            return None     # an earlier version removed blobs before the manifest: forgotten
        if saved != size:
            raise UndoRecordError(f"the undo record {record.name} of an interrupted in-place run "
                                  "is damaged (a saved part has the wrong size); nothing was "
                                  "changed: restore the slide from a copy, then remove the record")
    return {"files": files, "renames": renames}


def restore(record: Path) -> bool:
    """Put back what an undo record saved; True when there was something to restore. A record
    without a manifest was never sealed (nothing had been changed) or was being forgotten
    (the change was complete): it is removed. Every step can be repeated: a restore that is
    itself interrupted is finished by the next one; the manifest goes last."""
    data = _load(record)
    if data is None:
        forget(record)
        return False
    for old, new in reversed(data["renames"]):
        old_path, new_path = Path(old), Path(new)
        if os.path.lexists(new_path) and not os.path.lexists(old_path):
            os.rename(new_path, old_path)
    for entry in data["files"]:
        path = Path(entry["path"])
        if "whole" in entry:
            # a replacement the interrupted run was writing (`.NAME.xxxx.partial`) goes too
            for partial in path.parent.glob(f".{_glob_escape(path.name)}.*{PARTIAL}"):
                partial.unlink(missing_ok=True)
            replace_durably(path, (record / entry["whole"]).read_bytes())
            continue
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            for start, end, blob in entry["ranges"]:
                os.pwrite(fd, (record / blob).read_bytes(), start)
            os.ftruncate(fd, entry["size"])
            os.fsync(fd)
        finally:
            os.close(fd)
    folders = {Path(e["path"]).parent for e in data["files"]}
    folders |= {Path(p).parent for pair in data["renames"] for p in pair}
    for folder in folders:
        if folder.is_dir():
            fsync_dir(folder)
    forget(record)
    return True


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]
