"""detect -> read -> plan -> write -> verify, for one slide."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import open_slide
from .adapters.ometiff import Naming, OmeTiffSlide
from .background import Background
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
            _release(verify_tiff(path, slide, plan, chain, policy, before, input_intact=False),
                     path, target)
        else:
            assert outdir is not None
            target = outdir / name
            tmp = outdir / f".{name}.{secrets.token_hex(4)}.partial"
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    # The kernel copies while this thread plans (both read the input once,
                    # through the page cache); writeback starts as soon as the copy is done.
                    copier = Background(lambda: (copy_file(path, fd), start_writeback(fd)))
                    try:
                        plan, chain = slide.plan(policy)
                    finally:
                        copier.join()
                    result.plan = plan
                    write = write_tiff(slide.tiff, fd, chain)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _release(verify_tiff(tmp, slide, plan, chain, policy, before, input_intact=True),
                         tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        result.output = target
        result.zeroed_bytes = write.zeroed_bytes
        return result
    finally:
        slide.close()


def _release(problems: list[str], written: Path, target: Path) -> None:
    """Give a verified file its final name (durably); refuse an unverified one."""
    if problems:
        raise VerificationError("; ".join(problems))
    os.replace(written, target)
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
