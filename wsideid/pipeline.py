"""detect -> read -> plan -> write -> verify -> release, for one slide of any format."""
from __future__ import annotations

from dataclasses import dataclass, replace

from . import adapters
from .background import Background
from .containers.output import Target
from .errors import VerificationError
from .keyring import Keyring
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
    `screen=False`: the image data is not looked into, only the metadata is read)."""
    adapter = adapters.by_name(job.format)
    slide = adapter.read(job)
    try:
        naming = naming_of(adapter, slide, keyring, name)
        return naming, adapter.plan(slide, policy, naming, screen=screen)
    finally:
        slide.close()


def run(job: Job, settings: Settings) -> Result:
    """De-identify one slide. The output appears under its final name only when it is complete
    and verified; a failure leaves nothing behind (in place: the input as it was, unless the
    failure came after patching began)."""
    adapter = adapters.by_name(job.format)
    result = Result(job.path)
    slide = adapter.read(job)
    try:
        naming = naming_of(adapter, slide, settings.keyring, settings.name)
        result.pseudonym = naming.pseudonym
        # what OpenSlide shows of the input: read beside the copy, or before patching in place
        seen = adapter.reader_path(slide)
        before = Background(lambda: openslide_view(seen) if seen is not None else None)
        if settings.target.in_place:
            before.join()
        writer = adapter.writer(slide, naming, settings.target)
        try:
            plan = adapter.plan(slide, settings.policy, naming,
                                screen=not writer.screens)
            result.plan = plan
            if plan.empty is not None:
                writer.abort()
                result.pseudonym, result.message = "", plan.empty
                return result
            written = writer.finish(plan)
        except BaseException:
            writer.abort()
            raise
        try:
            problems = verify(adapter, slide, plan, written, settings.policy, naming, before.join())
            if problems:
                raise VerificationError("; ".join(problems))
            result.output = written.release()
        except BaseException:
            written.discard()
            raise
        result.zeroed_bytes = written.zeroed_bytes
        return result
    finally:
        slide.close()
