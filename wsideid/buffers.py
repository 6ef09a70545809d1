"""Byte buffers reused across reads, and a byte comparison without temporaries.

A process works through slide after slide, each read window by window: a new buffer per window
costs its page faults (the kernel zeroes every fresh page, huge pages included, before the read
overwrites it), so each thread keeps its buffers for the next read.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

import numpy as np

_local = threading.local()


def scratch(name: str, size: int) -> np.ndarray:
    """A buffer of at least `size` bytes for this thread's use under `name`, kept for the next
    call (its contents are whatever the last user left)."""
    kept = getattr(_local, name, None)
    if kept is None or len(kept) < size:
        kept = np.empty(size, dtype=np.uint8)
        setattr(_local, name, kept)
    return kept


def _memcmp():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        fn = libc.memcmp
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    fn.restype = ctypes.c_int
    return fn


_MEMCMP = _memcmp()


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two contiguous byte arrays are equal (C memcmp: no array of booleans as big as
    the data is made)."""
    if len(a) != len(b):
        return False
    if _MEMCMP is None or not (a.flags.c_contiguous and b.flags.c_contiguous):
        return bool(np.array_equal(a, b))
    return _MEMCMP(a.ctypes.data, b.ctypes.data, len(a)) == 0
