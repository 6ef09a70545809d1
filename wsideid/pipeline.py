"""detect -> read -> plan -> write -> verify -> release, for one slide of any format."""
from __future__ import annotations

from dataclasses import dataclass

from . import adapters
from .background import Background
from .containers.output import Target
from .errors import VerificationError
from .keyring import Keyring
from .model import Job, Plan, Result
from .policy import Policy
from .verify import verify
from .verify.reader import openslide_view


@dataclass(frozen=True)
class Settings:
    policy: Policy
    keyring: Keyring
    target: Target = Target()


def plan_job(job: Job, policy: Policy, keyring: Keyring) -> Plan:
    """The plan of one slide, as `deid` would carry it out (nothing is written)."""
    adapter = adapters.by_name(job.format)
    slide = adapter.read(job)
    try:
        naming = adapter.naming(slide, keyring) if policy.deidentify else adapter.stored_naming(slide)
        return adapter.plan(slide, policy, naming)
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
        if settings.policy.deidentify:
            naming = adapter.naming(slide, settings.keyring)
            result.pseudonym = naming.pseudonym
        else:   # `redact`: the slide keeps its names
            naming = adapter.stored_naming(slide)
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
