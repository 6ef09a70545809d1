"""The registry of formats: every adapter module of this package, in detection order.

Like OpenSlide's format table, the first adapter whose `detect` accepts a file wins; generic
TIFF comes last. Adapter modules keep their imports light (what a format needs is imported
when a slide of that format is read), so finding the formats costs little at start-up.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path

from .base import Adapter, Probe


@lru_cache(maxsize=1)
def adapters() -> tuple[Adapter, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        adapter = getattr(module, "ADAPTER", None)
        if isinstance(adapter, Adapter):
            found.append(adapter)
    return tuple(sorted(found, key=lambda a: (a.order, a.name)))


def by_name(name: str) -> Adapter:
    for adapter in adapters():
        if adapter.name == name:
            return adapter
    raise KeyError(name)


def detect(path: Path) -> Adapter | None:
    """The format of a file, by content (MIRAX: by its name, as OpenSlide), or None."""
    probe = Probe(Path(path))
    for adapter in adapters():
        if adapter.detect(probe):
            return adapter
    return None
