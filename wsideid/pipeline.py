"""detect -> read -> plan -> write -> verify, for one slide."""
from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import open_slide
from .adapters.ometiff import Naming, OmeTiffSlide
from .errors import SlideError, VerificationError
from .model import Plan
from .policy import Policy
from .pseudonym import Keyring, fingerprint
from .readers import openslide_view
from .tiff.writer import copy_file, start_writeback, write_tiff
from .verify import verify_tiff


@dataclass
class Result:
    source: Path
    pseudonym: str = ""
    output: Path | None = None
    plan: Plan | None = None
    status: str = "ok"        # ok | failed (verification) | error (unreadable input, I/O)
    message: str = ""
    zeroed_bytes: int = 0
    problems: list[str] = field(default_factory=list)


def plan_slide(path: Path, policy: Policy) -> Plan:
    slide = open_slide(path)
    try:
        plan, _ = slide.plan(policy)
        return plan
    finally:
        slide.close()


def deidentify(path: Path, policy: Policy, keyring: Keyring, outdir: Path | None,
               in_place: bool = False) -> Result:
    """De-identify one slide into `outdir` (or in place). Never leaves a partial output."""
    result = Result(path)
    slide = open_slide(path)
    try:
        fp = fingerprint(path)
        result.pseudonym = keyring.slide_pseudonym(fp)
        name = result.pseudonym + slide.extension
        if isinstance(slide, OmeTiffSlide):
            slide.naming = Naming(result.pseudonym, name, keyring.file_uuid(fp))
        before = openslide_view(path)
        if in_place:
            target = path.with_name(name)
            if target != path and target.exists():
                raise SlideError(f"{target.name} already exists next to the input")
            plan, chain = slide.plan(policy)
            result.plan = plan
            fd = os.open(path, os.O_RDWR)
            try:
                write = write_tiff(slide.tiff, fd, chain)
                os.fsync(fd)
            finally:
                os.close(fd)
            problems = verify_tiff(path, slide, plan, chain, policy, before, input_intact=False)
            if problems:
                raise VerificationError("; ".join(problems))
            os.replace(path, target)
            _fsync_dir(target.parent)
        else:
            assert outdir is not None
            target = outdir / name
            tmp = outdir / f".{name}.{secrets.token_hex(4)}.partial"
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    # The kernel copies while this thread plans (both read the input once,
                    # through the page cache); writeback starts as soon as the copy is done.
                    copier = _Background(lambda: (copy_file(path, fd), start_writeback(fd)))
                    try:
                        plan, chain = slide.plan(policy)
                    finally:
                        copier.join()
                    result.plan = plan
                    write = write_tiff(slide.tiff, fd, chain)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                problems = verify_tiff(tmp, slide, plan, chain, policy, before, input_intact=True)
                if problems:
                    raise VerificationError("; ".join(problems))
                os.replace(tmp, target)
                _fsync_dir(outdir)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        result.output = target
        result.zeroed_bytes = write.zeroed_bytes
        return result
    finally:
        slide.close()


class _Background:
    """Run a function in a thread; join() re-raises what it raised."""

    def __init__(self, fn):
        self.error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
