"""An independent re-read of a written slide before it is released: shared checks
(checks.py, reader.py) and one module per container."""
from __future__ import annotations

from typing import Any

from ..containers.output import Written
from ..model import Naming, Plan
from ..policy import Policy
from .reader import ReaderView


def verify(adapter: Any, source: Any, plan: Plan, written: Written, policy: Policy,
           naming: Naming, before: ReaderView | None) -> list[str]:
    """What is wrong with the written output (empty: it may be released). The output is
    re-planned without the regions (they are painted already); the regions are checked on
    their own (regions.py)."""
    if adapter.container == "tiff":
        from . import tiff as container
    elif adapter.container == "mirax":
        from . import mirax as container
    else:
        from . import dicom as container
    problems = container.verify(adapter, source, plan, written, policy.without_redaction(),
                                naming, before)
    if plan.redactions() and not problems:
        from . import regions

        problems += regions.verify(adapter, plan, written)
    if policy.deidentify and not problems:
        from . import associated

        problems += associated.verify(adapter, plan, written, naming)
    return problems
