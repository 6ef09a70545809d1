"""From what the user named to slides, and the loop over them.

Files are taken as given; folders are walked for files some format claims. A DICOM series is
one slide whatever files and folders its instances are in. Each slide runs through the
pipeline on its own: one failing slide never stops the others.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import adapters
from .errors import InstallError, OutputError, SlideError, VerificationError
from .model import Job, Result
from .pipeline import Settings, run

OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


@dataclass
class Found:
    jobs: list[Job] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)   # (what, why) for each input that is not a slide
    restored: list[Path] = field(default_factory=list)   # inputs an interrupted in-place run had changed


def find(inputs: list[Path], repair: bool = True) -> Found:
    """Every slide among the inputs: files as given, folders walked (a walked file that no
    format claims is not a slide and is skipped). With `repair`, slides an interrupted
    in-place run left half-changed are restored first."""
    found = Found()
    if repair:
        found.restored = restore_interrupted(inputs)
    files: list[tuple[Path, adapters.Adapter]] = []
    for item in inputs:
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.is_file() and not p.is_symlink()):
                adapter = adapters.detect(path)
                if adapter is not None:
                    files.append((path, adapter))
        elif item.is_file():
            adapter = adapters.detect(item)
            if adapter is None:
                found.problems.append((item, not_a_slide(item)))
            else:
                files.append((item, adapter))
        else:
            found.problems.append((item, "no such file or folder"))
    groups: dict[tuple[str, str], list[Path]] = {}
    for path, adapter in files:
        if not adapter.multi_file:
            found.jobs.append(Job((path,), adapter.name))
            continue
        try:
            groups.setdefault((adapter.name, adapter.group_key(path)), []).append(path)
        except SlideError as exc:
            found.problems.append((path, str(exc)))
    found.jobs += [Job(tuple(paths), name) for (name, _), paths in groups.items()]
    return found


def restore_interrupted(inputs: list[Path]) -> list[Path]:
    """Slides an in-place run was killed while changing are put back first, from the undo
    records beside them (before anything looks at their content)."""
    from .containers.files import UNDO_SUFFIX, restore

    records = []
    for item in inputs:
        if item.is_dir():
            records += sorted(item.rglob(f".*{UNDO_SUFFIX}"))
        else:
            record = item.with_name(f".{item.name}{UNDO_SUFFIX}")
            if record.exists():
                records.append(record)
    return [record.with_name(record.name[1:-len(UNDO_SUFFIX)]) for record in records
            if restore(record)]


def not_a_slide(path: Path) -> str:
    size = path.stat().st_size
    why = "too short" if size < 8 else "it does not start like one"
    return f"not a TIFF, DICOM or MIRAX slide ({why})"


def run_all(jobs: list[Job], settings: Settings, on_result: Callable[[Result], None]) -> list[Result]:
    """Every job through the pipeline, one after the other; two inputs with the same content
    (the same pseudonym) are released once."""
    results: list[Result] = []
    seen: dict[str, Path] = {}
    for job in jobs:
        result = attempt(job, settings)
        if result.status == "ok" and result.pseudonym:
            if result.pseudonym in seen:
                result.status, result.message = "error", "same content as another input"
            seen[result.pseudonym] = job.path
        results.append(result)
        on_result(result)
    return results


def attempt(job: Job, settings: Settings) -> Result:
    return guarded(job.path, lambda: run(job, settings), settings.target.outdir)


def guarded(source: Path, work: Callable[[], Result], outdir: Path | None) -> Result:
    """One slide's work; any failure becomes a Result that says what failed: the input when
    the input is the problem, else the output folder. A broken installation stops the run
    (raised)."""
    try:
        return work()
    except SlideError as exc:
        return Result(source, status="error", message=str(exc))
    except VerificationError as exc:
        return Result(source, status="failed", message=f"verification failed: {exc}")
    except InstallError:
        raise
    except OutputError as exc:
        return Result(source, status="error", message=str(exc), failed=outdir)
    except OSError as exc:
        result = Result(source, status="error", message=f"{exc.strerror or exc}")
        if outdir is not None and (exc.errno in OUTPUT_ERRNOS or _names_inside(exc, outdir)):
            result.message = f"cannot write the output: {exc.strerror or exc}"
            result.failed = outdir
        return result


def _names_inside(exc: OSError, folder: Path) -> bool:
    return any(name is not None and inside(Path(os.fsdecode(name)), folder)
               for name in (exc.filename, exc.filename2))


def inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
