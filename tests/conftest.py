from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_SLIDES = ROOT.parent / "shared" / "slides"
sys.path.insert(0, str(ROOT))


def run(*args: str | os.PathLike, check: int | None = None) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "wsideid", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def byte_forms(needle: str) -> list[bytes]:
    forms = []
    for variant in (needle, needle.lower(), needle.upper()):
        for enc in ("utf-8", "utf-16-le", "utf-16-be"):
            forms.append(variant.encode(enc).lower())
    return forms


CHUNK = 64 << 20


def _chunks(path: Path, overlap: int):
    """The file's data, lower-cased, in overlapping chunks; holes of sparse files (which read
    as zeros) are skipped with SEEK_DATA/SEEK_HOLE, so multi-GB sparse slides stay cheap."""
    with open(path, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                return
            end = os.lseek(fd, start, os.SEEK_HOLE)
            while start < end:
                data = os.pread(fd, min(CHUNK, end - start) + overlap, start)
                yield data.lower()
                start += CHUNK
            pos = end


def found_needles(paths, needles) -> dict[str, list[str]]:
    """{file: [needles found]} over file bytes (any case, ASCII and UTF-16) and file paths."""
    hits: dict[str, list[str]] = {}
    forms = {n: byte_forms(n) for n in needles}
    overlap = max((len(f) for fs in forms.values() for f in fs), default=0)
    for path in paths:
        path = Path(path)
        name = str(path).lower().encode()
        found = {n for n, fs in forms.items() if any(f in name for f in fs)}
        if path.is_file():
            for data in _chunks(path, overlap):
                found |= {n for n, fs in forms.items() if n not in found and any(f in data for f in fs)}
        for needle in needles:
            if needle in found:
                hits.setdefault(str(path), []).append(needle)
    return hits


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*"))


def shared_slide(rel: str) -> Path:
    path = SHARED_SLIDES / rel
    if not path.exists():
        pytest.fail(f"real test slide missing: {path} (../shared/slides must sit beside the project)")
    return path


def stored_runs(fh, page) -> list[bytes]:
    """The stored (compressed) bytes of every tile or strip of a tifffile page."""
    runs = []
    for off, n in zip(page.dataoffsets, page.databytecounts):
        fh.seek(off)
        runs.append(fh.read(n))
    return runs


def deid_real_copy(tmp_path: Path, rel: str, *options) -> tuple[Path, Path, Path]:
    """Copy a real slide from ../shared/slides, de-identify it through the CLI, and check that
    its input stayed as it was; returns (input copy, output folder, the one output slide)."""
    import shutil

    original = shared_slide(rel)
    src = tmp_path / original.name
    shutil.copy(original, src)
    before = sha256(src)
    out = tmp_path / "out"
    run("deid", src, "-o", out, *options, check=0)
    assert sha256(src) == before
    [dst] = [p for p in out.iterdir() if p.name not in ("wsideid-report.json", ".wsideid")]
    return src, out, dst


def assert_rejected(src: Path, expect: str, *command) -> None:
    """Bad input: exit 2, exactly one error line naming the file and the problem, no
    traceback, the input unchanged, and nothing (not even a partial file) in the output."""
    before = sha256(src)
    out = src.parent / "out"
    proc = run(*(command or ("deid",)), src, "-o", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsideid: error:")]
    assert len(errors) == 1 and str(src) in errors[0] and expect in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha256(src) == before
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert left in ([], ["wsideid-report.json"]), left
