"""Read a JPEG's quantised DCT coefficients with libjpeg-turbo instead of Python.

libjpeg-turbo's lossless transformer (tjTransform) calls a custom filter with every
component's coefficient rows; with TJXOPT_NOOUTPUT it writes nothing, which makes it a fast
coefficient reader (turbojpeg.h documents this use). The Huffman decoding then runs in C,
about twenty times faster than the pure-Python decoder in jpeg_entropy.py; writing stays with
jpeg_entropy, so the stream's own Huffman tables are kept.

`read_coefficients` returns None whenever the library is missing or the stream's block grid
is not the one this module expects, and the caller falls back to the Python decoder.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

import numpy as np

from . import jpeg_entropy as je

TJXOPT_NOOUTPUT = 16
TJFLAG_STOPONWARNING = 8192


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int),
                ("h", ctypes.c_int)]


class _Transform(ctypes.Structure):
    pass


_FILTER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), _Region, _Region,
                           ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Transform))
_Transform._fields_ = [("r", _Region), ("op", ctypes.c_int), ("options", ctypes.c_int),
                       ("data", ctypes.c_void_p), ("customFilter", _FILTER)]


def _zigzag() -> np.ndarray:
    """Natural (row-major) index of each zigzag position (T.81 figure A.6)."""
    order = sorted(((r, c) for r in range(8) for c in range(8)),
                   key=lambda rc: (rc[0] + rc[1], rc[0] if (rc[0] + rc[1]) % 2 else rc[1]))
    return np.array([r * 8 + c for r, c in order])


ZIGZAG = _zigzag()


@lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL, int] | None:
    name = ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.tjInitTransform.restype = ctypes.c_void_p
    lib.tjTransform.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int,
                                ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)),
                                ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(_Transform),
                                ctypes.c_int]
    lib.tjTransform.restype = ctypes.c_int
    handle = lib.tjInitTransform()
    return (lib, handle) if handle else None


def available() -> bool:
    return _library() is not None


def read_coefficients(stream: bytes, tables: bytes | None, info: je.JpegInfo,
                      layout: je.Layout) -> np.ndarray | None:
    """(n_blocks, 64) zigzag coefficients in scan order, or None (use the Python decoder).

    Raises je.JpegError when libjpeg-turbo finds the data corrupt."""
    found = _library()
    if found is None or len(info.scan) != len(info.components):
        return None
    lib, handle = found
    if tables:
        stream = stream[:2] + tables[2:-2] + stream[2:]   # an abbreviated tile made whole
    planes: dict[int, np.ndarray] = {}

    def collect(coeffs, array, plane, comp, _index, _transform) -> int:
        if comp not in planes:
            planes[comp] = np.zeros((plane.h // 8, plane.w // 8, 64), np.int16)
        rows, cols = array.h // 8, array.w // 8
        chunk = np.ctypeslib.as_array(coeffs, shape=(rows, cols, 64))
        r0, c0 = array.y // 8, array.x // 8
        planes[comp][r0:r0 + rows, c0:c0 + cols] = chunk[:planes[comp].shape[0] - r0,
                                                         :planes[comp].shape[1] - c0]
        return 0

    transform = _Transform(_Region(0, 0, 0, 0), 0, TJXOPT_NOOUTPUT, None, _FILTER(collect))
    out = ctypes.POINTER(ctypes.c_ubyte)()
    size = ctypes.c_ulong(0)
    if lib.tjTransform(handle, stream, len(stream), 1, ctypes.byref(out), ctypes.byref(size),
                       ctypes.byref(transform), TJFLAG_STOPONWARNING):
        raise je.JpegError("JPEG entropy data is corrupt (libjpeg-turbo)")
    comp, by, bx = layout.blocks()
    for c in range(len(info.components)):
        rows = layout.mcus_y * int(layout.v[layout.comp == c][0])
        cols = layout.mcus_x * int(layout.h[layout.comp == c][0])
        if c not in planes or planes[c].shape[:2] < (rows, cols):
            return None
    coefs = np.empty((len(comp), 64), np.int32)
    for c, plane in planes.items():
        sel = comp == c
        coefs[sel] = plane[by[sel], bx[sel]][:, ZIGZAG]
    return coefs
