"""Checks every container's output goes through: the re-plan finds nothing left to do, no
removed value is left in bytes that are not image data, kept image data equals the input."""
from __future__ import annotations

from collections import Counter

from .. import needles
from ..model import Plan
from ..sampling import FULL_COMPARE_BYTES, SAMPLE_RUNS, sample  # noqa: F401 - shared here


def check_fields(plan: Plan, out_plan: Plan, settled: tuple[str, ...] = ("keep",)) -> list[str]:
    """The output's re-plan finds nothing left to do, and every field the plan kept is still
    there."""
    return nothing_left(plan, out_plan, settled) + nothing_lost(plan, out_plan)


def nothing_left(plan: Plan, out_plan: Plan, settled: tuple[str, ...] = ("keep",)) -> list[str]:
    """Every field of the output's re-plan is settled: its action is one of `settled`, or its
    value is one this run wrote (a transformed date, a pseudonym)."""
    written = {f.new_value for f in plan.fields if f.action in ("date", "replace") and f.new_value}
    return [f"{f.location}: {f.name} is still present" for f in out_plan.fields
            if f.action not in settled and not (f.value and f.value in written)]


def nothing_lost(plan: Plan, out_plan: Plan) -> list[str]:
    """Every field the plan kept (by name, with its count) is in the output's re-plan."""
    problems = []
    wanted = Counter(f.name for f in plan.fields if f.action in ("keep", "date", "clean"))
    found = Counter(f.name for f in out_plan.fields if f.action in ("keep", "date"))
    for name, n in (wanted - found).items():
        problems.append(f"{name} was to be kept but is missing ({n}x)")
    return problems


def check_images(plan: Plan, out_plan: Plan) -> list[str]:
    """The output holds exactly the images the plan kept, in order, with their roles."""
    kept = [img.role for img in plan.images if img.action != "drop"]
    out = [img.role for img in out_plan.images]
    if kept != out:
        return [f"output images are {out}, expected {kept}"]
    return []


def residue_targets(plan: Plan, kept: list[str]) -> list[str]:
    """The removed values worth searching for: long enough, and not part of what is kept."""
    return needles.usable(plan.removed_values(), kept, written=plan.written_values())


def residue(data: bytes, targets: list[str], where: str = "the file") -> list[str]:
    return [f"a removed value of {len(n)} characters is still in {where}"
            for n in needles.find_in(data, targets)]
