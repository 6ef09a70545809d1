"""detect -> read -> plan -> write -> verify -> release, for one slide of any format."""
from __future__ import annotations

import errno
import os

from dataclasses import dataclass, replace

from . import adapters, associated
from .background import Background
from .containers.output import Target
from .errors import SlideError, VerificationError
from .keyring import Keyring
from .library_warnings import withheld
from .model import Job, Naming, Plan, Result
from .policy import Policy
from .verify import verify
from .verify.reader import openslide_view


@dataclass(frozen=True)
class Settings:
    policy: Policy
    keyring: Keyring
    target: Target = Target()
    name: str = ""      # the slide's released name instead of its keyed pseudonym (a mapping's)
    keep_undo: bool = False   # in place: the caller forgets the undo record (after its map row)


def naming_of(adapter, slide, keyring: Keyring, name: str = "") -> Naming:
    """The slide's naming: keyed from its content, or under a given name (the extension and
    every other keyed identifier stay as they are)."""
    naming = adapter.naming(slide, keyring)
    if not name or name == naming.pseudonym:
        return naming
    extension = naming.output_name[len(naming.pseudonym):]
    return replace(naming, pseudonym=name, output_name=name + extension)


def plan_job(job: Job, policy: Policy, keyring: Keyring, name: str = "",
             screen: bool = True) -> tuple[Naming, Plan]:
    """The naming and plan of one slide, as `deid` would carry them out (nothing is written;
    `screen=False`: the image data is not looked into, only the metadata is read). Libraries'
    warnings are counted, never printed (their messages quote the slide's values)."""
    with withheld() as caught:
        naming, plan = _plan_job(job, policy, keyring, name, screen)
    plan.warnings += caught.summary()
    plan.library_log += caught.log_summary()
    return naming, plan


def _plan_job(job: Job, policy: Policy, keyring: Keyring, name: str,
              screen: bool) -> tuple[Naming, Plan]:
    adapter = adapters.by_name(job.format)
    slide = adapter.read(job)
    try:
        if not policy.deidentify:   # `redact`: the slide keeps its names
            naming = adapter.stored_naming(slide)
            return naming, adapter.plan(slide, policy, naming, screen=screen)
        naming = naming_of(adapter, slide, keyring, name)
        slide_policy, found, warnings, new_images = look_at_images(adapter, slide, policy, naming)
        plan = adapter.plan(slide, slide_policy, naming, screen=screen, new_images=new_images)
        plan.fields += found
        plan.warnings += warnings
        return naming, plan
    finally:
        slide.close()


def look_at_images(adapter, slide, policy: Policy, naming) -> tuple[Policy, list, list, list]:
    """What the slide's label, overview and thumbnail show, and what follows from it."""
    checks = associated.examine(adapter, slide, policy)
    return associated.decide(adapter, slide, policy, checks, naming)


def run(job: Job, settings: Settings) -> Result:
    """De-identify one slide. The output appears under its final name only when it is complete
    and verified; a failure leaves nothing behind (in place: the input as it was, unless the
    failure came after patching began). Libraries' warnings are counted, never printed (their
    messages quote the slide's values)."""
    with withheld() as caught:
        result = _run(job, settings)
    if result.plan is not None:
        result.plan.warnings += caught.summary()
        result.plan.library_log += caught.log_summary()
    return result


def _run(job: Job, settings: Settings) -> Result:
    adapter = adapters.by_name(job.format)
    result = Result(job.path)
    if settings.target.in_place:
        for path in job.paths:
            if path.is_symlink():
                raise SlideError("is a symbolic link: --in-place would change the file it points "
                                 "to; give that file itself")
    recovered = recover(job)
    stamps = _stamps(job)
    slide = adapter.read(job)
    before = None
    try:
        if settings.policy.deidentify:
            naming = naming_of(adapter, slide, settings.keyring, settings.name)
            result.pseudonym = naming.pseudonym
        else:   # `redact`: the slide keeps its names
            naming = adapter.stored_naming(slide)
        # what OpenSlide shows of the input: read beside the copy, or before patching in place
        seen = adapter.reader_path(slide)
        before = Background(lambda: openslide_view(seen, decode=True) if seen is not None else None)
        if settings.target.in_place:
            _decodes(before.join())
        writer = adapter.writer(slide, naming, settings.target)
        try:
            # while the bulk copy runs: what the associated images show, then the plan
            if settings.policy.deidentify:
                policy, found, warnings, new_images = look_at_images(adapter, slide,
                                                                     settings.policy, naming)
            else:   # `redact`: the slide as stored, but for the regions
                policy, found, warnings, new_images = settings.policy, [], [], []
            plan = adapter.plan(slide, policy, naming, screen=not writer.screens,
                                new_images=new_images)
            plan.fields += found
            plan.warnings += warnings
            result.plan = plan
            if plan.empty is not None:
                writer.abort()
                result.pseudonym, result.message = "", plan.empty
                return result
            _decodes(before.join())
            written = writer.finish(plan)
        except BaseException:
            writer.abort()
            raise
        if recovered:
            plan.warnings.append("an interrupted in-place run had left the input half-changed: "
                                 "it was restored from its undo record first")
        try:
            # the output is planned again under the slide's policy (what its images showed is
            # still forbidden); images are matched by role there, not by their input index
            replan = replace(policy, image_overrides=())
            try:
                problems = verify(adapter, slide, plan, written, replan, naming, before.join())
            except (SlideError, VerificationError):
                raise
            except Exception as exc:  # noqa: BLE001 - a check that cannot run has not passed
                # a library's message may quote the slide: the kind of failure only
                problems = [f"a check could not run ({type(exc).__name__})"]
            if problems:
                if settings.target.in_place:
                    problems.append("the input was restored as it was")
                elif _stamps(job) != stamps:   # the input's fault, not the output's
                    raise SlideError("changed while it was being read (its size or time of "
                                     "change differ now): nothing was released")
                raise VerificationError("; ".join(problems))
            result.output = written.release()
        except BaseException:
            written.discard()
            raise
        if written.undo is not None:
            if settings.keep_undo:
                result.undo = written.undo
            else:
                from .containers.files import forget

                forget(written.undo)
        result.zeroed_bytes = written.zeroed_bytes
        return result
    finally:
        if before is not None:   # an early error: OpenSlide may still be reading the input
            before.wait()
        slide.close()


def _stamps(job: Job) -> list[tuple[int, int]]:
    """Size and time of last change of every input file (a missing one: zeros)."""
    out = []
    for path in job.paths:
        try:
            st = os.stat(path)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0))
    return out


def _decodes(view) -> None:
    """An input OpenSlide opens but cannot decode (a corrupt tile) is not a readable slide:
    refused before anything is written, as any other unreadable input."""
    if view is not None and view.decode_error is not None:
        raise SlideError(f"OpenSlide cannot decode it: {view.decode_error}")


def recover(job: Job) -> bool:
    """Put back any slide file an interrupted in-place run left half-changed (its undo record
    lies beside it); True when something was restored."""
    from .containers.files import restore, undo_record_for

    restored = False
    for path in job.paths:
        record = undo_record_for(path)
        try:
            present = record.exists()
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            present = False     # a name too long for a record beside it: none was ever made
        if present:
            restored |= restore(record)
    return restored
