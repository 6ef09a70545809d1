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
    """What is wrong with the written output (empty: it may be released)."""
    if adapter.container == "tiff":
        from . import tiff as container
    elif adapter.container == "mirax":
        from . import mirax as container
    else:
        from . import dicom as container
    return container.verify(adapter, source, plan, written, policy, naming, before)
